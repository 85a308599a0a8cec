"""Example and known images of taxonomies: ``zstagger examples embed`` and ``zstagger examples show``.

``embed`` writes the self-contained taxonomy: the same spec with its images embedded for a
model (``image_vectors``), so that queue workers which cannot read the files tag with it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from ..settings import Settings
from .common import cli, model_options, print_table, reports_errors
from .progress import progress_bar

DEFAULT_INLINE_LIMIT = 256 * 1024


def load_taxonomy(name_or_file: str):
    """A registered taxonomy by name, or a taxonomy file (.yaml, .yml, .json) by path."""
    from ..registry import get_taxonomy
    from ..taxonomy import Taxonomy

    if os.path.isfile(name_or_file) or name_or_file.lower().endswith((".yaml", ".yml", ".json")):
        return Taxonomy.from_file(name_or_file)
    return get_taxonomy(name_or_file)


@cli.group()
def examples():
    """Example, counter-example and known images of taxonomies."""


@examples.command("embed")
@click.option("-t", "--taxonomy", required=True, help="A registered taxonomy's name, or a taxonomy file.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Taxonomy YAML to write.")
@model_options
@click.option("--inline-limit", type=click.IntRange(min=0), default=DEFAULT_INLINE_LIMIT, show_default=True,
              help="Packs of vectors up to this many bytes go inside the YAML; larger ones into a file beside it.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when stderr is a terminal).")
@reports_errors
def embed(taxonomy, output, model, batch_size, device, precision, inline_limit, progress):
    """Embed a taxonomy's images for a model: write the self-contained taxonomy.

    The output is the same spec plus `image_vectors` for the model, so it tags without
    reading the image files: in queue workers on other machines, for instance. Run it
    again on the output with another --model to add that model's vectors.

    \b
    zstagger examples embed -t taxonomies/moderation-plus.yaml --model openai/clip-vit-base-patch32 -o deploy/moderation-plus.yaml
    """
    from ..evaluation.api import write_taxonomy
    from ..fewshot import embed_into_spec
    from ..tagger import Tagger

    spec = load_taxonomy(taxonomy)
    settings = Settings(**{k: v for k, v in {"model": model, "device": device, "precision": precision,
                                             "batch_size": batch_size}.items() if v is not None})
    out = Path(output)
    show = progress if progress is not None else sys.stderr.isatty()
    with Tagger(settings=settings, image_cache=True) as tagger:
        fingerprint = tagger.fingerprint or tagger.encoder.fingerprint

        def embed_with_progress(refs):
            with progress_bar(len(refs), "embedding", show) as bar:
                return tagger.embed_images(refs, progress=bar.update)

        embedded, files = embed_into_spec(
            spec, fingerprint, tagger.model_name, tagger.preprocessing, embed_with_progress, out_dir=str(out.parent),
            pack_name=lambda key: f"{out.stem}.{key}.vectors", inline_limit=inline_limit,
        )
    header = (f"Written by `zstagger examples embed`: taxonomy {spec.name!r} with its images embedded for "
              f"{', '.join(v.model for v in embedded.image_vectors.values())} (image_vectors).")
    path = write_taxonomy(embedded, out, header=header, files=files)
    vectors = embedded.image_vectors[fingerprint]
    where = f"in {', '.join(files)}" if files else "inline"
    click.echo(f"wrote {path}: {vectors.count} images embedded with {tagger.model_name} (fingerprint {fingerprint}), "
               f"{vectors.size:,} bytes {where}", err=True)


@examples.command("show")
@click.option("-t", "--taxonomy", required=True, help="A registered taxonomy's name, or a taxonomy file.")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@reports_errors
def show(taxonomy, as_json):
    """Which labels name images, and which models the taxonomy carries their vectors for."""
    from ..fewshot.sets import image_counts
    from ..taxonomy import FewShot

    spec = load_taxonomy(taxonomy)
    rows = [{"label": name, "examples": kinds.get("examples", 0), "counter-examples": kinds.get("negative_examples", 0),
             "known images": kinds.get("known_images", 0), "match threshold": spec.label(name).match_threshold or ""}
            for name, kinds in image_counts(spec).items()]
    models = {key: {"model": v.model, "images": v.count, "bytes": v.size, "preprocessing": v.preprocessing}
              for key, v in spec.image_vectors.items()}
    settings = spec.few_shot or FewShot()
    few_shot = {"method": settings.method, **settings.knobs()}
    if as_json:
        click.echo(json.dumps({"taxonomy": spec.name, "few_shot": few_shot, "labels": rows, "image_vectors": models}, indent=2))
        return
    click.echo(f"{spec.name} v{spec.version}: images relative to {spec.images_base()}; few_shot: "
               + ", ".join(f"{k}={v}" for k, v in few_shot.items()))
    if rows:
        print_table(rows, ["label", "examples", "counter-examples", "known images", "match threshold"])
    else:
        click.echo("no label names images")
    for key, info in models.items():
        click.echo(f"vectors for {info['model']} (fingerprint {key}): {info['images']} images, {info['bytes']:,} bytes")
