"""``zstagger review``: fill the review queue (``enqueue``), see how it goes (``stats``), and
write what people decided as a weighted manifest for ``eval`` and ``calibrate`` (``export``)."""

from __future__ import annotations

import json
import sys

import click

from ..settings import Settings
from .common import cli, reports_errors
from .store import _open, _policy, _selection, _settings, _store_option, _tagger


@cli.group()
def review() -> None:
    """The human review queue, in the embedding store's database (ZSTAGGER_STORE or --store)."""


def _band(value: str) -> tuple[str, tuple[float, float]]:
    label, _, span = value.partition("=")
    low, _, high = span.partition(":")
    try:
        return label, (float(low), float(high))
    except ValueError:
        raise click.BadParameter(f"{value!r}: write LABEL=LOW:HIGH, e.g. weapons=0.45:0.7") from None


@review.command()
@click.option("-t", "--taxonomy", "taxonomy_name", required=True, help="The taxonomy the results are of (name or file): "
              "its labels' thresholds set the bands.")
@click.option("--job", metavar="ID", help="Results of a queued job (Redis, ZSTAGGER_REDIS_URL).")
@click.option("--results", "results_file", type=click.File("r"), help="Results as JSON Lines (`zstagger tag` output; - for stdin).")
@click.option("--from-store", is_flag=True, help="Re-score the embedding store's images with the taxonomy (no image is read).")
@click.option("--since", metavar="WHEN", help="With --from-store: only images seen since then (2024-05-01, 7d).")
@click.option("--store-job", metavar="ID", help="With --from-store: only the images recorded for this job.")
@click.option("--band", "bands", multiple=True, metavar="LABEL=LOW:HIGH", help="A label's uncertainty band (repeatable).")
@click.option("--band-width", type=click.FloatRange(min=0.0, min_open=True), default=0.1, show_default=True,
              help="Band under a label whose threshold is the taxonomy's default.")
@click.option("--band-rate", type=click.FloatRange(0.0, 1.0, min_open=True), default=1.0, show_default=True,
              help="Share of the band's results queued.")
@click.option("--audit-rate", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.02, show_default=True,
              help="Share of all other results queued as the random audit sample.")
@click.option("--blocked-rate", type=click.FloatRange(0.0, 1.0, min_open=True),
              help="Queue this share of the results above a label's band (that fired) as a stratum of their own "
                   "(default: they are part of the audit). What the block threshold's precision is learnt from.")
@click.option("--stratum", "strata", multiple=True, type=click.Choice(["band", "blocked", "audit"]),
              help="Only these strata (default all).")
@click.option("--seed", default="0", show_default=True, help="Which items the sampling picks (the same seed picks the same).")
@click.option("--model", help="With --from-store: the model that built the store (ZSTAGGER_MODEL).")
@_store_option
@reports_errors
def enqueue(taxonomy_name, job, results_file, from_store, since, store_job, bands, band_width, band_rate, audit_rate,
            blocked_rate, strata, seed, model, store_url):
    """Queue results for review: those in a label's uncertainty band, and a random audit sample
    of the rest; each item records the probability it had of being chosen. Prints counts (JSON).

    \b
    zstagger review enqueue -t moderation --job 3f2a...
    zstagger tag photos/ -t moderation --format jsonl | zstagger review enqueue -t moderation --results -
    zstagger review enqueue -t moderation --from-store --since 1d --audit-rate 0.01 --blocked-rate 0.05
    """
    from ..review import ReviewQueue, Selection, default_bands

    if sum(bool(x) for x in (job, results_file, from_store)) != 1:
        raise click.UsageError("give exactly one of --job ID, --results FILE or --from-store")
    spec = _policy(taxonomy_name)
    try:
        selection = Selection(default_bands(spec, band_width, dict(_band(b) for b in bands)), band_rate=band_rate,
                              audit_rate=audit_rate, seed=seed, strata=tuple(strata) or ("band", "blocked", "audit"),
                              blocked_rate=blocked_rate)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    settings = _settings(model)
    store = _open(store_url, settings, create=True)
    queue = ReviewQueue(store)
    try:
        if job:
            from ..queue.client import Job

            counts = queue.enqueue((line for line in Job(job).result_lines() if line), selection, job_id=job)
        elif results_file is not None:
            counts = queue.enqueue((line for line in results_file if line.strip()), selection, job_id="")
        else:
            from ..catalogue import open_catalogue
            from ..catalogue.retag import retag_lines

            since_ts, job_id = _selection(since, store_job)
            with _tagger(settings, store) as tagger:
                catalogue = open_catalogue(store, tagger, since=since_ts, job_id=job_id)
                counts = queue.enqueue((line for page in retag_lines(catalogue, spec) for line in page), selection,
                                       job_id=store_job or "")
    finally:
        store.close()
    click.echo(json.dumps(counts))


@review.command()
@_store_option
@reports_errors
def stats(store_url):
    """Pending and decided items per stratum, agreement with the model, each reviewer's decisions and pace (JSON)."""
    from ..review import ReviewQueue

    store = _open(store_url, Settings(), create=True)
    try:
        click.echo(json.dumps(ReviewQueue(store).stats(), indent=2))
    finally:
        store.close()


@review.command()
@click.option("-o", "--output", type=click.File("w"), default="-", show_default=True, help="Where to write the manifest.")
@_store_option
@reports_errors
def export(output, store_url):
    """Every standing decision as a JSON Lines manifest that `eval` and `calibrate` read: image, labels,
    and weight = 1 / inclusion probability (plus taxonomy, stratum, reviewer, decided)."""
    from ..review import ReviewQueue

    store = _open(store_url, Settings(), create=True)
    count = 0
    try:
        for row in ReviewQueue(store).export():
            output.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    finally:
        store.close()
    output.flush()
    click.echo(f"{count} decisions exported", err=True)
    sys.exit(0)
