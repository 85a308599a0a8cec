"""Built runtimes from the command line: ``zstagger runtime build | qualify | show``.

Progress goes to stderr; ``qualify`` prints its record (``--json``) or a summary on stdout
and exits 1 when the runtime fails the limits.
"""

from __future__ import annotations

import json
import sys

import click

from ..settings import Settings
from .common import EXIT_FAILED_INPUTS, EXIT_OK, check_taxonomy_choice, cli, reports_errors, taxonomy_options


def _log(message: str) -> None:
    click.echo(f"runtime: {message}", err=True)


@cli.group()
def runtime() -> None:
    """Build a faster runtime of a model (OpenVINO int8/fp16/fp32), qualify it on your images, inspect it.

    \b
    zstagger runtime build openai/clip-vit-base-patch32 --precision int8 --calibration photos/ -o clip-int8/
    zstagger runtime qualify clip-int8/ --data labelled/ -t moderation
    zstagger tag photos/ -t moderation --model clip-int8/
    """


@runtime.command("build")
@click.argument("model")
@click.option("--runtime", "kind", type=click.Choice(["openvino"]), default="openvino", show_default=True)
@click.option("--precision", type=click.Choice(["int8", "fp16", "fp32"]), default="int8", show_default=True)
@click.option("--calibration", type=click.Path(),
              help="Directory (or file) of your own images to quantize on; int8 needs them (32-300 is plenty).")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="New directory for the runtime.")
@click.option("--overwrite", is_flag=True, help="Replace a runtime built in that directory before.")
@reports_errors
def build(model, kind, precision, calibration, output, overwrite):
    """Export MODEL (checkpoint directory or Hub id) to a runtime directory; int8 is quantized on --calibration images.

    Needs torch, transformers, openvino and nncf; using the result needs only openvino.
    """
    from ..images import ImagePolicy, expand_inputs
    from ..runtimes.build import build_runtime

    refs = None
    if calibration is not None:
        refs = list(expand_inputs([calibration]))
        if not refs:
            raise click.UsageError(f"no images found in --calibration {calibration}")
    manifest = build_runtime(model, output, precision, refs, runtime=kind, policy=ImagePolicy.from_settings(Settings()),
                             overwrite=overwrite, log=_log)
    click.echo(json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True))


@runtime.command("qualify")
@click.argument("directory", type=click.Path(file_okay=False))
@taxonomy_options
@click.option("--data", type=click.Path(), help="Labelled images (folders or a .jsonl/.csv manifest, as `zstagger eval`).")
@click.option("--images", type=click.Path(), help="Unlabelled images: agreement with the source model only.")
@click.option("--source", help="Compare with this checkpoint instead of the one the runtime was built from.")
@click.option("--bootstrap", type=click.IntRange(min=0), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the whole record as JSON.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when stderr is a terminal).")
@reports_errors
def qualify_command(directory, taxonomy, labels, template, data, images, source, bootstrap, as_json, progress):
    """Compare a built runtime with its source model on your images; record pass/fail for the taxonomy in DIRECTORY.

    Limits: ZSTAGGER_QUALIFY_MIN_VERDICT_AGREEMENT (0.99) and ZSTAGGER_QUALIFY_MIN_TAG_AGREEMENT (0.98).
    """
    from ..evaluation.qualify import qualify

    check_taxonomy_choice(taxonomy, labels, template)
    if (data is None) == (images is None):
        raise click.UsageError("give exactly one of --data LABELLED or --images DIR")
    show = progress if progress is not None else sys.stderr.isatty()
    bars: dict = {}

    def update(which: str, count: int) -> None:
        if not show:
            return
        from tqdm import tqdm

        if which not in bars:
            bars[which] = tqdm(unit="img", file=sys.stderr, desc=f"qualify ({which})")
        bars[which].update(count)

    record = qualify(directory, taxonomy, labels=labels.split(",") if labels else None, template=template, data=data,
                     images=images, source=source, bootstrap_rounds=bootstrap, progress=update)
    for bar in bars.values():
        bar.close()
    if as_json:
        click.echo(record.model_dump_json(indent=2))
    else:
        print_record(record)
    sys.exit(EXIT_OK if record.passed else EXIT_FAILED_INPUTS)


def print_record(record) -> None:
    click.echo(f"{record.runtime} {record.precision} vs {record.source_model} on {record.images} images, "
               f"taxonomy {record.taxonomy} {record.taxonomy_version}")
    click.echo(f"  {record.decision} agreement {record.verdict_agreement:.4f} (limit {record.limits['verdict_agreement']})")
    click.echo(f"  lowest tag agreement {record.min_tag_agreement:.4f} (limit {record.limits['tag_agreement']})")
    click.echo(f"  score delta mean {record.mean_abs_score_delta:.5f}, max {record.max_abs_score_delta:.5f}")
    if record.accuracy is not None:
        a = record.accuracy
        interval = f" [{a.change_low:+.4f}, {a.change_high:+.4f}]" if a.change_low is not None else ""
        click.echo(f"  {a.figure}: source {a.source:.4f}, runtime {a.runtime:.4f}, change {a.change:+.4f}{interval}")
    click.echo("PASSED" if record.passed else "FAILED: " + "; ".join(record.failures))


@runtime.command("show")
@click.argument("directory", type=click.Path(file_okay=False))
@reports_errors
def show(directory):
    """Print a runtime's manifest, fingerprint and qualification records as JSON."""
    from ..runtimes import read_manifest, runtime_fingerprint
    from ..runtimes.qualification import RECORDS_DIR, read_record
    from pathlib import Path

    manifest = read_manifest(directory)
    records = []
    folder = Path(directory) / RECORDS_DIR
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            record = read_record(directory, path.stem)
            if record is not None:
                records.append({"taxonomy": record.taxonomy, "taxonomy_fingerprint": record.taxonomy_fingerprint,
                                "passed": record.passed, "current": record.runtime_fingerprint == runtime_fingerprint(directory),
                                "verdict_agreement": record.verdict_agreement, "min_tag_agreement": record.min_tag_agreement,
                                "images": record.images, "created": record.created})
    click.echo(json.dumps({"manifest": manifest.model_dump(mode="json"), "fingerprint": runtime_fingerprint(directory),
                           "qualifications": records}, indent=2, sort_keys=True))
