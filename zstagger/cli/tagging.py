"""Tagging from the command line: ``zstagger tag`` and ``zstagger bench``."""

from __future__ import annotations

import sys

import click

from ..results import MultiTagResult
from ..settings import Settings
from .common import (
    EXIT_FAILED_INPUTS, EXIT_OK, announce_model_load, check_taxonomy_choice, cli, model_options, one_or_several,
    read_references, reader_may_leave, reports_errors, require_some_input_exists, several_taxonomies_options,
    taxonomy_options, unwinds_on_sigterm,
)
from .progress import progress_bar


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@several_taxonomies_options
@model_options
@click.option("--top-k", type=click.IntRange(min=1), help="Report only the K best scores per image.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "table"]), help="Default: table on a terminal, jsonl otherwise.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when stderr is a terminal).")
@click.option("--frames", "per_frame", is_flag=True, help="Add each sampled frame's scores to animation and video results.")
@click.option("--jsonl", "stdin_items", is_flag=True,
              help='With -: stdin is a JSON Lines item list ({"image": ..., "text": ...} a line), not references.')
@reports_errors
def tag(inputs, taxonomies, labels, template, model, batch_size, device, precision, top_k, fmt, progress, per_frame,
        stdin_items):
    """Tag images: files, directories, http(s) URLs, item lists (*.jsonl), or - for references on stdin.

    Animated GIF/APNG/WebP and videos (MP4, MOV, WebM, MKV, ...) are judged over their
    sampled frames; their results add media, segments (flagged stretches, in seconds) and,
    with --frames, each sampled frame's scores.

    Several -t: each image is read and encoded once and scored against each taxonomy; one
    line per image, {"image": ..., "taxonomies": {NAME: RESULT, ...}}, each RESULT what -t
    NAME alone writes. An item list's lines are {"image": "photo.jpg", "text": "title"}:
    taxonomies with a text_fusion setting fuse the text with the image.

    \b
    zstagger tag photos/ -t moderation
    zstagger tag photos/ -t moderation -t ecommerce
    zstagger tag products.jsonl -t ecommerce
    zstagger tag cat.jpg --labels "cat,dog,bird"
    zstagger tag clip.mp4 -t moderation --frames
    find /data -iname '*.jpg' | zstagger tag - -t ecommerce --format jsonl
    """
    from ..images import expand_inputs
    from ..sources import is_prefix
    from ..tagger import Tagger

    taxonomy, several = one_or_several(taxonomies, labels, template)
    fmt = fmt or ("table" if sys.stdout.isatty() else "jsonl")
    # Fail fast, before the model loads.
    spec = Tagger.resolve_each(several) if several else Tagger.resolve(taxonomy, labels.split(",") if labels else None, template)
    refs = list(expand_inputs(read_references(inputs, jsonl=stdin_items)))
    if not refs:
        raise click.UsageError("no images found in the given inputs")
    listed = any(is_prefix(ref) for ref in refs)  # s3://bucket/prefix/: listed as it is tagged, count unknown
    if listed:
        check_prefixes(refs)
    else:
        require_some_input_exists(refs)
    announce_model_load(model)
    tagger = Tagger(model, device=device, precision=precision, batch_size=batch_size)
    failed = seen = 0
    show = progress if progress is not None else sys.stderr.isatty()
    # Ctrl-C and SIGTERM unwind through the tagger: it writes the embedding store's records
    # of every image printed before the command exits (130 or 143).
    with unwinds_on_sigterm(), reader_may_leave(), tagger, \
            progress_bar(None if listed else len(refs), "tagging", show) as bar:
        results = (tagger.tag_iter(refs, taxonomies=spec, top_k=top_k, frames=per_frame) if several else
                   tagger.tag_iter(refs, spec, top_k=top_k, frames=per_frame))
        for result in results:
            failed += result.error is not None
            seen += 1
            bar.update(1)
            line = result.to_json() if fmt == "jsonl" else format_row(result)
            if show:
                bar.write(line, file=sys.stdout)  # keeps the bar below the output on a terminal
            else:
                click.echo(line)
    if failed:
        click.echo(f"{failed} of {seen} inputs could not be tagged (see their error fields)", err=True)
    sys.exit(EXIT_FAILED_INPUTS if failed else EXIT_OK)


def format_row(result) -> str:
    if isinstance(result, MultiTagResult):  # the image once, then each taxonomy's rows under its name
        if result.error is not None:
            return format_row(next(iter(result.taxonomies.values())))
        rows = [result.image.encode("utf-8", "backslashreplace").decode("utf-8")]
        for name, one in result.taxonomies.items():
            rows.append(f"  [{name}]" + format_row(one).split("\n", 1)[-1].replace("\n", "\n  "))
        return "\n".join(rows)
    if result.error is not None:
        row = f"{result.image}\n  ERROR {result.error.type}: {result.error.message}"
    else:
        head = f"{result.image}"
        if result.verdict is not None:
            head += f"  verdict={result.verdict}"
        head += f"  tags={', '.join(result.tags) or '-'}"
        scores = "  ".join(f"{s.label}={s.score:.3f}" for s in result.scores[:5])
        row = f"{head}\n  {scores}"
        for segment in result.segments or []:
            row += f"\n  {segment.label} {segment.start:.2f}-{segment.end:.2f} s (peak {segment.peak_score:.3f} at {segment.peak_time:.2f} s)"
    # A file name that is not UTF-8 (surrogate escapes) is shown as \udcXX, as in the JSON.
    return row.encode("utf-8", "backslashreplace").decode("utf-8")


@cli.command()
@click.option("--model", help="Checkpoint to measure (ZSTAGGER_MODEL); a local directory works offline.")
@taxonomy_options
@click.option("--images", type=click.Path(exists=True, file_okay=False), help="Directory of images (default: 64 generated 1280x960 JPEGs).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Passes per measurement; the best counts.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@reports_errors
def bench(model, taxonomy, labels, template, images, batch_size, repeats, as_json):
    """Measure throughput: HF pipeline, bare forward, decode, end to end, start-up, precision.

    Progress goes to stderr, the report to stdout.
    """
    from ..bench import dump, format_table, run_bench

    if taxonomy is None and labels is None:
        taxonomy = "moderation"
    check_taxonomy_choice(taxonomy, labels, template)
    report = run_bench(
        model or Settings().model, images, taxonomy, labels.split(",") if labels else None,
        batch_size=batch_size, repeats=repeats, log=lambda msg: click.echo(f"bench: {msg}...", err=True),
    )
    click.echo(dump(report) if as_json else format_table(report))


def check_prefixes(refs: list) -> None:
    """Exit 2 before any model loads when a prefix to list is refused (allow-list, credentials
    in the URL) or its store cannot be reached: its first page is listed here, and again when tagged."""
    from ..errors import ImageLoadError, ZstaggerError
    from ..images import ImagePolicy
    from ..sources import is_prefix, list_prefix

    policy = ImagePolicy.from_settings(Settings())
    for ref in refs:
        if is_prefix(ref):
            try:
                next(iter(list_prefix(ref, policy, page_size=1)), None)
            except (ImageLoadError, ZstaggerError) as exc:
                raise click.UsageError(f"cannot list a prefix: {exc}") from None
