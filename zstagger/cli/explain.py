"""``zstagger explain``: where in an image a label comes from, as a heat map (JSON) and an overlay PNG."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..explain import DEFAULT_GRID, MAX_GRID, MIN_GRID
from .common import announce_model_load, check_taxonomy_choice, cli, model_options, reports_errors, taxonomy_options


@cli.command()
@click.argument("image")
@taxonomy_options
@model_options
@click.option("--label", help="The label to explain (default: the image's first tag, else its best-scoring label).")
@click.option("--grid", type=click.IntRange(MIN_GRID, MAX_GRID), default=DEFAULT_GRID, show_default=True,
              help="Cells per side of the heat map.")
@click.option("--sparse", is_flag=True, help="Fewer windows (5 instead of 9 at grid 4): about half the time, a coarser map.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write the image with the heat map over it (PNG).")
@reports_errors
def explain(image, taxonomy, labels, template, model, batch_size, device, precision, label, grid, sparse, output):
    """Show which regions of IMAGE drive a label: every window of a grid is scored as an image
    of its own; prints the heat map as JSON (rows top to bottom), and with -o an overlay PNG.

    \b
    zstagger explain photo.jpg -t moderation -o overlay.png
    zstagger explain photo.jpg -t moderation --label weapons/firearm --grid 6
    """
    from ..explain import explain_image, overlay_png
    from ..tagger import Tagger

    check_taxonomy_choice(taxonomy, labels, template)
    spec = Tagger.resolve(taxonomy, labels.split(",") if labels else None, template)
    if label is not None and label not in spec.labels_by_name:
        raise click.UsageError(f"taxonomy {spec.name!r} has no label {label!r}")
    announce_model_load(model)
    with Tagger(model, device=device, precision=precision, batch_size=batch_size, image_cache=False) as tagger:
        heatmap, picture = explain_image(tagger, image, spec, label, grid, sparse)
    if output is not None:
        output.write_bytes(overlay_png(heatmap, picture))
    click.echo(json.dumps(heatmap.to_dict()))
