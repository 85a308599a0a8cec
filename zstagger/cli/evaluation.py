"""Measuring and tuning accuracy from the command line: ``zstagger eval`` and ``zstagger calibrate``.

The summary (or ``--json``) goes to stdout, progress and warnings to stderr.
"""

from __future__ import annotations

import sys

import click

from ..settings import Settings
from .common import (
    EXIT_FAILED_INPUTS,
    EXIT_OK,
    check_taxonomy_choice,
    cli,
    model_options,
    print_table,
    reports_errors,
    taxonomy_options,
)
from .progress import progress_bar


def _progress(show: bool | None, what: str):
    """A progress bar on stderr per dataset (when stderr is a terminal, or --progress)."""

    def start(dataset):
        bar = progress_bar(len(dataset.items), what, show)

        def update(count: int) -> None:
            bar.update(count)
            if bar.n >= len(dataset.items):
                bar.close()  # before the summary is printed

        return update

    return start


def _settings(model, device, precision, batch_size) -> Settings:
    given = {"model": model, "device": device, "precision": precision, "batch_size": batch_size}
    return Settings(**{k: v for k, v in given.items() if v is not None})


@cli.command("eval")
@click.argument("data", type=click.Path())
@taxonomy_options
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), help="Write an HTML report with plots into DIR.")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the image-embedding cache.")
@click.option("--bootstrap", type=click.IntRange(min=0), default=1000, show_default=True, help="Bootstrap resamples for the 95% intervals.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when stderr is a terminal).")
@reports_errors
def eval_command(data, taxonomy, labels, template, model, batch_size, device, precision, as_json, report_dir, no_cache,
                 bootstrap, progress):
    """Measure a taxonomy on labelled images: DATA/<label>/*.jpg folders or a .jsonl/.csv manifest.

    \b
    zstagger eval photos-labelled/ -t moderation --report eval-report/
    zstagger eval manifest.jsonl -t ecommerce --json > figures.json
    """
    from ..evaluation import evaluate

    check_taxonomy_choice(taxonomy, labels, template)
    report = evaluate(
        data, taxonomy, labels=labels.split(",") if labels else None, template=template,
        settings=_settings(model, device, precision, batch_size), report_dir=report_dir, cache=not no_cache,
        bootstrap_rounds=bootstrap, progress=_progress(progress, "eval"),
    )
    click.echo(report.model_dump_json(indent=2)) if as_json else print_eval(report)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    if report.report_dir:
        click.echo(f"report: {report.report_dir}/index.html", err=True)
    if report.unreadable_count:
        click.echo(f"{report.unreadable_count} of {report.images} images could not be read and are left out of every figure "
                   f"(first: {report.unreadable[0].image}: {report.unreadable[0].message})", err=True)
    sys.exit(EXIT_FAILED_INPUTS if report.unreadable_count else EXIT_OK)


@cli.command("calibrate")
@click.argument("data", type=click.Path())
@click.option("-t", "--taxonomy", required=True, help="Name of a registered taxonomy (see `zstagger taxonomies`).")
@click.option("--target-precision", type=float, help="Lowest threshold per label whose precision reaches P (most recall).")
@click.option("--target-recall", type=float, help="Highest threshold per label whose recall reaches R (most precision).")
@click.option("--objective", type=click.Choice(["f1"]), help="Threshold with the best F1 per label.")
@click.option("--per-action", help="Precision targets by action, e.g. block=0.99,review=0.9 (overrides the target for those labels).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Taxonomy YAML to write.")
@click.option("--name", help="Name of the calibrated taxonomy (default: NAME-calibrated, so it can sit beside NAME).")
@click.option("--folds", type=click.IntRange(2, 20), default=5, show_default=True, help="Cross-validation folds for held-out figures.")
@click.option("--min-positives", type=click.IntRange(min=1), default=10, show_default=True,
              help="Labels with fewer positives keep their threshold.")
@click.option("--examples", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also pick K example images per label from the data and write them into the taxonomy "
                   "(held-out figures with and without them are reported).")
@click.option("--estimator", type=click.Choice(["counted", "fitted"]),
              help="How a threshold's precision is estimated: counted over the images above it, or fitted "
                   "(P(true | score) fitted on the images; steadier from a few hundred reviewed items). "
                   "Default: fitted when the manifest has weights (zstagger review export), else counted.")
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print the calibration report as JSON.")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the image-embedding cache.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when stderr is a terminal).")
@reports_errors
def calibrate_command(data, taxonomy, target_precision, target_recall, objective, per_action, output, name, folds,
                      min_positives, examples, estimator, model, batch_size, device, precision, as_json, no_cache, progress):
    """Choose per-label thresholds on labelled images for a target; write a calibrated taxonomy.

    \b
    zstagger calibrate labelled/ -t moderation --target-precision 0.9 --per-action block=0.99 -o moderation-calibrated.yaml
    zstagger calibrate labelled/ -t shop --objective f1 --examples 8 -o shop-calibrated.yaml
    ZSTAGGER_TAXONOMY_PATH=. zstagger eval labelled/ -t moderation-calibrated
    """
    from ..evaluation import calibrate, write_taxonomy

    report = calibrate(
        data, taxonomy, target_precision=target_precision, target_recall=target_recall, objective=objective,
        per_action=parse_per_action(per_action), folds=folds, min_positives=min_positives, name=name,
        settings=_settings(model, device, precision, batch_size), cache=not no_cache, progress=_progress(progress, "calibrate"),
        examples=examples, estimator=estimator,
    )
    path = write_taxonomy(report.taxonomy, output)
    click.echo(report.model_dump_json(indent=2)) if as_json else print_calibration(report)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"wrote {path} (taxonomy {report.taxonomy.name!r} v{report.taxonomy.version}); use it with "
               f"ZSTAGGER_TAXONOMY_PATH={path.parent} ... -t {report.taxonomy.name}", err=True)


def parse_per_action(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    out = {}
    for part in text.split(","):
        action, sep, value = part.partition("=")
        try:
            out[action.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise click.UsageError(f"--per-action: expected ACTION=PRECISION pairs like block=0.99,review=0.9, got {part!r}")
    return out


# -- terminal summaries ------------------------------------------------------------------------


def print_eval(report) -> None:
    click.echo(f"{report.taxonomy} v{report.taxonomy_version} ({report.mode}-label) on {report.dataset}: "
               f"{report.evaluated} images evaluated, {report.unreadable_count} unreadable left out")
    click.echo(f"model {report.model} ({report.preprocessing} preprocessing); image embeddings: {report.cache_hits} cached, "
               f"{report.cache_misses} computed; intervals: 95% bootstrap ({report.bootstrap_rounds} resamples)")
    _media_line(report.media)
    for level in report.levels:
        click.echo(f"\nlevel {level.depth} ({level.images} images): top-1 {level.top1}  top-{level.top_k} {level.top5}  "
                   f"tag accuracy {level.accuracy}")
        _label_table(level.labels)
        if level.most_confused:
            click.echo("most confused (true -> predicted): " + ", ".join(
                f"{p.true} -> {p.predicted} ({p.count})" for p in level.most_confused[:5]))
    if report.averages is not None:
        click.echo("")
        _label_table(report.labels, threshold_free=True)
        a = report.averages
        click.echo(f"micro: precision {a.micro_precision}  recall {a.micro_recall}  f1 {a.micro_f1}  AP {_num(a.micro_average_precision)}")
        click.echo(f"macro: precision {a.macro_precision}  recall {a.macro_recall}  f1 {a.macro_f1}  AP "
                   f"{_num(a.macro_average_precision)}  ROC-AUC {_num(a.macro_roc_auc)}")
    if report.verdicts is not None:
        v = report.verdicts
        click.echo(f"\nverdicts (rows: strictest true action, columns: verdict): accuracy {v.accuracy}")
        print_table([{"true": a, **{f"got {b}": v.table[i][j] for j, b in enumerate(v.actions)}} for i, a in enumerate(v.actions)],
                    ["true"] + [f"got {b}" for b in v.actions])
        click.echo(f"misses (block-worthy got allow): {v.misses}   review-worthy got allow: {v.review_misses}")
        click.echo(f"false alarms (clean got block or review): {v.false_alarms}")
    if report.few_shot is not None:
        f = report.few_shot
        kinds = {"examples": "examples", "negative_examples": "counter-examples", "known_images": "known images"}
        click.echo(f"\nlabels with images ({f.method}, " + ", ".join(f"{k} {v:g}" for k, v in f.settings.items())
                   + f"; vectors from {f.images_from}): " + "; ".join(
                       f"{label} " + ", ".join(f"{n} {kinds[k]}" for k, n in counts.items()) for label, counts in f.labels.items()))
    if report.signals:
        click.echo(f"\nimage only against image+text (the same {report.evaluated} images; text fused with "
                   f"{report.signals[-1].text_fusion}; the figures above are image only, --json has both in full):")
        figures = [("top1", "top-1"), ("accuracy", "tag accuracy"), ("micro_f1", "micro f1"), ("macro_f1", "macro f1"),
                   ("macro_average_precision", "macro AP"), ("verdict_accuracy", "verdict accuracy")]
        shown = [(key, title) for key, title in figures if getattr(report.signals[0], key) is not None]
        print_table([{"signal": row.signal, "with text": row.images_with_text,
                      **{title: _num(v) if isinstance(v := getattr(row, key), float) else str(v) for key, title in shown}}
                     for row in report.signals], ["signal", "with text", *[title for _, title in shown]])
    if report.facets:
        click.echo("\nfacets (on the images whose rows give them; null counts as a value):")
        _facet_table(report.facets)
    if report.calibration is not None:
        c = report.calibration
        click.echo(f"\ncalibrated {c.date} for {c.target} on {c.dataset} ({c.images} images, {c.folds}-fold held-out):")
        print_table([{"label": k, "status": x.status, "threshold": f"{x.threshold:.4f}",
                      "held-out precision": _triple(x.held_out_precision), "held-out recall": _triple(x.held_out_recall)}
                     for k, x in c.labels.items()], ["label", "status", "threshold", "held-out precision", "held-out recall"])


def _facet_table(facets) -> None:
    print_table([{"facet": m.facet, "threshold": f"{m.threshold:.3f}", "judged": m.judged, "applies": m.applies,
                  "accuracy": str(m.accuracy), "precision": str(m.precision), "recall": str(m.recall),
                  "coverage": f"{m.coverage:.2f}"} for m in facets],
                ["facet", "threshold", "judged", "applies", "accuracy", "precision", "recall", "coverage"])


def _media_line(media, what: str = "figures") -> None:
    if media is not None:
        kinds = ", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in media.kinds.items())
        click.echo(f"media: {kinds}, each judged as one item: {what} are {media.unit}; score: {media.aggregation}")


def _label_table(labels, threshold_free: bool = False) -> None:
    columns = ["label", "threshold", "support", "predicted", "precision", "recall", "f1"]
    if threshold_free:
        columns += ["AP", "ROC-AUC"]
    print_table([{"label": m.label, "threshold": f"{m.threshold:.3f}", "support": m.support, "predicted": m.predicted,
                  "precision": str(m.precision), "recall": str(m.recall), "f1": str(m.f1),
                  "AP": _num(m.average_precision), "ROC-AUC": _num(m.roc_auc)} for m in labels], columns)


def print_calibration(report) -> None:
    click.echo(f"{report.source_taxonomy} -> {report.taxonomy.name} v{report.taxonomy.version} on {report.dataset}: "
               f"{report.evaluated} images, {report.folds}-fold cross-validation (95% bootstrap intervals)")
    fitted = any(r.estimated_precision is not None for r in report.labels)
    _media_line(report.media, "thresholds")
    if report.text is not None:
        click.echo(f"text: {report.text.images_with_text} inputs have a text; thresholds are chosen on their scores "
                   f"with it fused ({report.text.text_fusion}), as tagging them gives them")
    print_table([{"label": r.label, "target": r.target, "status": r.status, "positives": r.positives,
                  "threshold": f"{r.previous_threshold:.3f} -> {r.threshold:.4f}",
                  **({"fitted precision": _num(r.estimated_precision)} if fitted else {}),
                  "held-out precision": str(r.held_out_precision), "held-out recall": str(r.held_out_recall)}
                 for r in report.labels],
                ["label", "target", "status", "positives", "threshold", *(["fitted precision"] if fitted else []),
                 "held-out precision", "held-out recall"])
    if report.facets:
        click.echo("\nfacets (in-sample, on the images whose rows give them):")
        print_table([{"facet": r.facet, "target": r.target, "status": r.status, "judged": r.judged,
                      "threshold": f"{r.previous_threshold:.3f} -> {r.threshold:.4f}",
                      "accuracy": str(r.figures.accuracy), "precision": str(r.figures.precision)}
                     for r in report.facets], ["facet", "target", "status", "judged", "threshold", "accuracy", "precision"])
    if report.examples is not None:
        x = report.examples
        before = {r.label: r for r in x.labels_without_examples}
        click.echo(f"\nwith up to {x.per_label} examples per label (written into the taxonomy; held out: each fold's "
                   f"examples picked from the other folds): {x.metric} {x.with_examples} against {x.without_examples} without them "
                   "(the taxonomy as given)")
        print_table([{"label": r.label, "examples": x.labels.get(r.label, 0),
                      "held-out precision (without)": f"{r.held_out_precision} ({before[r.label].held_out_precision})",
                      "held-out recall (without)": f"{r.held_out_recall} ({before[r.label].held_out_recall})"}
                     for r in report.labels if r.label in before and x.labels.get(r.label)],
                    ["label", "examples", "held-out precision (without)", "held-out recall (without)"])


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _triple(values: list) -> str:
    if not values or values[0] is None:
        return "-"
    value, low, high = values
    return f"{value:.3f}" if low is None else f"{value:.3f} [{low:.2f}-{high:.2f}]"
