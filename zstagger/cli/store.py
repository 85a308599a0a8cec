"""The embedding store from the command line: ``store init|stats|purge|forget``, ``retag``, ``diff``, ``similar``.

Every command takes ``--store URL`` (default ``ZSTAGGER_STORE``). Machine-readable output
goes to stdout, progress and summaries of what was done to stderr.
"""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import datetime
from pathlib import Path

import click

from ..settings import Settings
from .common import EXIT_FAILED_INPUTS, check_taxonomy_choice, cli, print_table, reader_may_leave, reports_errors, taxonomy_options
from .progress import progress_bar

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def _store_option(func):
    return click.option("--store", "store_url", metavar="URL",
                        help="Embedding store: sqlite:///path or postgresql://... (default: ZSTAGGER_STORE).")(func)


def _open(store_url: str | None, settings: Settings, create: bool = False):
    from ..store import open_store

    return open_store(store_url or settings.store, timeout=settings.store_timeout, create=create)


def _settings(model: str | None) -> Settings:
    return Settings(model=model) if model else Settings()


def _tagger(settings: Settings, store):
    """A Tagger that scores stored embeddings: the store as a read-only cache, so nothing it
    looks up is recorded, and the model loads only if text embeddings are not cached."""
    from ..catalogue import ReadOnly
    from ..tagger import Tagger

    return Tagger(settings=settings, image_cache=ReadOnly(store))


def _selection(since: str | None, job: str | None) -> tuple[float | None, str | None]:
    from ..catalogue import parse_since
    from ..queue.jobstore import check_job_id

    return (parse_since(since) if since else None), (check_job_id(job) if job else None)


def _selection_options(func):
    func = click.option("--job", metavar="ID", help="Only the images of this job (as `zstagger enqueue` printed it).")(func)
    func = click.option("--since", metavar="WHEN",
                        help="Only images seen since then: 2024-05-01, 2024-05-01T08:00 (local time) or an age such as 7d.")(func)
    return func


def _bar(total: int, show: bool | None, what: str):
    return progress_bar(total, what, show)


def _when(seconds) -> str:
    return "-" if seconds is None else datetime.fromtimestamp(float(seconds)).isoformat(timespec="seconds")


# -- zstagger store ... ----------------------------------------------------------------------------


@cli.group("store")
def store_group() -> None:
    """The embedding store (ZSTAGGER_STORE): set up, inspect, purge by age, forget images."""


@store_group.command("init")
@_store_option
@reports_errors
def store_init(store_url):
    """Create the store's tables, or migrate them to this version (safe to run again).

    PostgreSQL stores need this once before workers write to them; an SQLite store sets
    itself up on first use.
    """
    settings = Settings()
    store = _open(store_url, settings, create=True)
    before, after = store.migrate()
    state = "up to date" if before == after else ("created" if before == 0 else f"migrated from version {before}")
    click.echo(f"embedding store {store.where}: schema version {after} ({state})")


@store_group.command("stats")
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@reports_errors
def store_stats(store_url, as_json):
    """Images, distinct embeddings, jobs, models and size of the store."""
    stats = _open(store_url, Settings()).stats()
    if as_json:
        click.echo(json.dumps(stats, indent=2))
        return
    if not stats["schema_version"]:
        click.echo(f"{stats['store']}: no zstagger tables (run `zstagger store init`)")
        return
    size = f", {stats['bytes'] / 2**20:.1f} MiB" if stats.get("bytes") is not None else ""
    click.echo(f"{stats['store']} ({stats['backend']}, schema {stats['schema_version']}{size}): {stats['images']} images, "
               f"{stats['embeddings']} distinct embeddings, {stats.get('media', 0)} animations and videos with their frames, "
               f"{stats['jobs']} jobs; seen {_when(stats['first_seen'])} to "
               f"{_when(stats['last_seen'])}")
    if stats["models"]:
        print_table([{**m, "fingerprint": m["fingerprint"]} for m in stats["models"]],
                    ["name", "fingerprint", "mode", "dim", "images", "embeddings"])


@store_group.command("purge")
@_store_option
@click.option("--older-than", "age", required=True, metavar="AGE", help="Delete images not seen for this long: 90d, 12h, 2w.")
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@reports_errors
def store_purge(store_url, age, dry_run):
    """Retention: delete images not seen for AGE, and the embeddings no image uses any more."""
    import time

    from ..catalogue import parse_age

    before = time.time() - parse_age(age)
    images, embeddings = _open(store_url, Settings()).purge(before, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {images} images last seen before {_when(before)} and {embeddings} embeddings no longer used")


@store_group.command("forget")
@_store_option
@click.option("--ref", "refs", multiple=True, metavar="REF", help="An image reference as results name it (repeatable).")
@click.option("--sha256", "hashes", multiple=True, metavar="HASH", help="The SHA-256 of an image's bytes (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print what was erased as JSON.")
@reports_errors
def store_forget(store_url, refs, hashes, as_json):
    """Erase images: their records and embeddings in the store and this machine's image-embedding cache.

    By --sha256: every image with those bytes, under any name, and its embeddings. By
    --ref: that reference's records, and the embedding of its content unless another
    reference still has the same bytes (then nothing left links it to the reference;
    forget the --sha256 too to remove it). Results kept in Redis expire with
    ZSTAGGER_RESULT_TTL.
    """
    from ..embedding_cache import default_image_cache

    if not refs and not hashes:
        raise click.UsageError("give at least one --ref REF or --sha256 HASH")
    bad = [h for h in hashes if not _SHA256.match(h)]
    if bad:
        raise click.UsageError(f"--sha256 {bad[0]!r} is not a SHA-256 (64 hex digits)")
    refs = [os.fsdecode(os.fsencode(r)) for r in refs]
    settings = Settings()
    erasure = _open(store_url, settings).forget(references=refs, sha256s=[h.lower() for h in hashes])
    cache = default_image_cache(settings.cache_dir)
    cached = cache.forget(erasure.erased) if cache is not None and cache.path.exists() else 0
    if as_json:
        click.echo(json.dumps({"images": erasure.images, "embeddings": erasure.embeddings, "cache_embeddings": cached,
                               "erased": erasure.erased, "kept": erasure.kept, "unmatched": erasure.unmatched}, indent=2))
        if erasure.unmatched:
            sys.exit(EXIT_FAILED_INPUTS)
        return
    click.echo(f"forgot {erasure.images} images and {erasure.embeddings} embeddings in the store, {cached} embeddings in "
               f"the image-embedding cache ({settings.cache_dir or 'off'})")
    if erasure.kept:
        click.echo(f"kept {len(erasure.kept)} embeddings that other references still use (forget them with --sha256): "
                   + ", ".join(erasure.kept[:5]) + (" ..." if len(erasure.kept) > 5 else ""), err=True)
    for given in erasure.unmatched:  # an erasure request must not pass silently when it found nothing
        click.echo(f"no record of {given}: references are kept as they were given to the command that tagged them "
                   "(relative paths stay relative); `zstagger similar FILE` finds an image by its content", err=True)
    if erasure.unmatched:
        sys.exit(EXIT_FAILED_INPUTS)


# -- retag, diff, similar ---------------------------------------------------------------------------


@cli.command()
@taxonomy_options
@_selection_options
@click.option("--model", help="The model that built the store (ZSTAGGER_MODEL); only its embeddings are scored.")
@_store_option
@click.option("--top-k", type=click.IntRange(min=1), help="Report only the K best scores per image.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "table"]), help="Default: table on a terminal, jsonl otherwise.")
@click.option("--as-job", is_flag=True, help="Save the results as a job in Redis instead; prints its id (`zstagger results ID`).")
@click.option("--workers", type=click.IntRange(min=0, max=64), default=0, show_default=True,
              help="Processes scoring and writing lines for big catalogues (0: one per core, at most 8).")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when stderr is a terminal).")
@reports_errors
def retag(taxonomy, labels, template, since, job, model, store_url, top_k, fmt, as_job, workers, progress):
    """Re-tag stored images with a (new or changed) taxonomy, without reading any image.

    Output is what `zstagger tag` prints for those images, with "source": "store" in its provenance, in the
    order the images were first recorded (a `zstagger tag` run records in input order; a queued job chunk by
    chunk, as they finish).

    \b
    zstagger retag -t moderation-v2 --since 30d > retagged.jsonl
    zstagger retag -t moderation-v2 --job 3f2a... --as-job
    """
    from ..catalogue import open_catalogue
    from ..catalogue.retag import SOURCE, retag_text
    from ..tagger import Tagger

    check_taxonomy_choice(taxonomy, labels, template)
    spec = _policy(taxonomy) if taxonomy and not labels else Tagger.resolve(taxonomy, labels.split(",") if labels else None,
                                                                             template)
    since_ts, job_id = _selection(since, job)
    settings = _settings(model)
    store = _open(store_url, settings)
    with _tagger(settings, store) as tagger:
        catalogue = open_catalogue(store, tagger, since=since_ts, job_id=job_id)
        tagger.classifier(spec)  # text embeddings before the first page (the model loads here if they are not cached)
        total = catalogue.count()
        pages = retag_text(catalogue, spec, top_k, workers=workers, total=total,
                           parallel_from=settings.retag_parallel_from)
        with _bar(total, progress, "retag") as bar:
            if as_job:
                from ..queue.results_job import save_as_job

                def lines():
                    for count, text in pages:
                        bar.update(count)
                        yield text.splitlines()

                job_handle = save_as_job(lines(), spec, Settings(), SOURCE)
                bar.close()
                click.echo(job_handle.id)
                click.echo(f"{total} stored images re-tagged as job {job_handle.id}: zstagger results {job_handle.id}", err=True)
                return
            fmt = fmt or ("table" if sys.stdout.isatty() else "jsonl")
            with reader_may_leave():
                for count, text in pages:
                    bar.update(count)
                    if fmt == "jsonl":
                        sys.stdout.write(text)
                    else:
                        from ..results import TagResult
                        from .tagging import format_row

                        click.echo("\n".join(format_row(TagResult.from_json(line)) for line in text.splitlines()))
    if total == 0:
        click.echo("no stored images match (see `zstagger store stats`)", err=True)


def _policy(text: str):
    """A taxonomy by name, or a YAML/JSON taxonomy file."""
    from ..errors import ConfigurationError
    from ..registry import resolve_taxonomy
    from ..taxonomy import Taxonomy

    if Path(text).suffix.lower() in (".yaml", ".yml", ".json") or os.sep in text:
        if not os.path.exists(text):
            raise ConfigurationError(f"no such taxonomy file: {text}")
        return Taxonomy.from_file(text)
    return resolve_taxonomy(text)


@cli.command("diff")
@click.option("--old", required=True, metavar="NAME|FILE", help="The taxonomy in force: a name or a YAML/JSON file.")
@click.option("--new", required=True, metavar="NAME|FILE", help="The candidate: a name or a YAML/JSON file.")
@_selection_options
@click.option("--model", help="The model that built the store (ZSTAGGER_MODEL).")
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print every figure (and the samples) as JSON.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), help="Write an HTML report with plots and thumbnails into DIR.")
@click.option("--samples", type=click.IntRange(min=0), default=8, show_default=True, help="Images kept per kind of change.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when stderr is a terminal).")
@reports_errors
def diff(old, new, since, job, model, store_url, as_json, report_dir, samples, progress):
    """Preview a policy change: what re-tagging the stored images with NEW instead of OLD would flip.

    \b
    zstagger diff --old moderation --new moderation-calibrated --report diff-report/
    zstagger diff --old moderation --new ./moderation-v2.yaml --since 30d --json
    """
    from ..catalogue import diff_policies, open_catalogue

    if report_dir is not None:
        from ..evaluation.extra import check_installed

        check_installed("matplotlib")
    before, after = _policy(old), _policy(new)
    since_ts, job_id = _selection(since, job)
    settings = _settings(model)
    store = _open(store_url, settings)
    with _tagger(settings, store) as tagger:
        catalogue = open_catalogue(store, tagger, since=since_ts, job_id=job_id)
        tagger.classifier(before), tagger.classifier(after)
        total = catalogue.count()
        with _bar(total, progress, "diff") as bar:
            result = diff_policies(catalogue, before, after, samples=samples, progress=bar.update)
    if report_dir is not None:
        from ..catalogue.report import write_diff_report
        from ..images import ImagePolicy

        written = write_diff_report(result, Path(report_dir), ImagePolicy.from_settings(settings))
        result = result.model_copy(update={"report_dir": str(written)})
        click.echo(f"report: {written}/index.html", err=True)
    click.echo(result.model_dump_json(indent=2)) if as_json else print_diff(result)


def print_diff(d) -> None:
    share = (lambda n: f"{n} ({100 * n / d.images:.1f}%)") if d.images else str
    click.echo(f"{d.old} -> {d.new} on {d.images} stored images (model {d.model}, {d.preprocessing}; {d.store})")
    click.echo(f"change tags: {share(d.changed_tags)}   change verdict: {share(d.changed_verdict)}")
    if d.verdict_table is not None:
        click.echo("\nverdicts (rows: old, columns: new)")
        print_table([{"old": a, **{f"new {b}": d.verdict_table[i][j] for j, b in enumerate(d.verdict_actions)}}
                     for i, a in enumerate(d.verdict_actions)], ["old"] + [f"new {b}" for b in d.verdict_actions])
        if d.transitions:
            click.echo("changes: " + ", ".join(f"{t.old} -> {t.new} {t.count}" for t in d.transitions))
    changed = [c for c in d.labels if c.newly_tagged or c.no_longer_tagged]
    if changed:
        click.echo("")
        print_table([{"label": c.label + ("" if c.in_old and c.in_new else (" (new)" if c.in_new else " (removed)")),
                      "before": c.old_tagged, "after": c.new_tagged, "newly tagged": c.newly_tagged,
                      "no longer tagged": c.no_longer_tagged} for c in changed[:40]],
                    ["label", "before", "after", "newly tagged", "no longer tagged"])
    if len(changed) > 40:
        click.echo(f"... and {len(changed) - 40} more labels that change (--json lists all)")
    click.echo(f"{len(d.labels) - len(changed)} labels tag the same images under both")


@cli.command()
@click.argument("image")
@click.option("--top", type=click.IntRange(min=1, max=1000), default=10, show_default=True, help="How many stored images.")
@click.option("--model", help="The model that built the store (ZSTAGGER_MODEL).")
@_store_option
@click.option("--format", "fmt", type=click.Choice(["jsonl", "table"]), help="Default: table on a terminal, jsonl otherwise.")
@reports_errors
def similar(image, top, model, store_url, fmt):
    """The stored images nearest to IMAGE (a file or URL): re-uploads and near copies.

    One line per stored content, most similar first: its similarity (cosine, 1.0 for the
    same bytes), how many stored images have it, and the latest of their references.
    """
    from ..catalogue import find_similar, open_catalogue

    settings = _settings(model)
    store = _open(store_url, settings)
    with _tagger(settings, store) as tagger:
        found = find_similar(open_catalogue(store, tagger), image, top)
    fmt = fmt or ("table" if sys.stdout.isatty() else "jsonl")
    with reader_may_leave():
        if fmt == "jsonl":
            for match in found:
                click.echo(match.model_dump_json())
            return
        print_table([{"similarity": f"{m.similarity:.4f}", "images": m.images,
                      "latest": m.references[0].image if m.references else "-",
                      "seen": _when(m.references[0].seen) if m.references else "-", "sha256": m.sha256[:16]}
                     for m in found], ["similarity", "images", "latest", "seen", "sha256"])
