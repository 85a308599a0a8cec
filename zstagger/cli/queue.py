"""The queue from the command line: ``worker``, ``enqueue``, ``status``, ``results``, ``health``, ``queue-stats``."""

from __future__ import annotations

import json
import sys

import click

from ..settings import PRECISIONS, Settings
from .common import (
    EXIT_FAILED_INPUTS, EXIT_OK, EXIT_TIMEOUT, cli, one_or_several, read_references, reader_may_leave,
    reports_errors, several_taxonomies_options,
)


@cli.command()
@click.option("--concurrency", "-c", type=click.IntRange(min=1), help="Worker processes, each with its own model (ZSTAGGER_CONCURRENCY, default 1).")
@click.option("--queues", "-Q", help="Comma-separated queues to consume (ZSTAGGER_QUEUES, default interactive,bulk).")
@click.option("--model", help="Hub id or local checkpoint directory (ZSTAGGER_MODEL).")
@click.option("--precision", type=click.Choice(PRECISIONS), help="ZSTAGGER_PRECISION.")
@click.option("--device", help="ZSTAGGER_DEVICE.")
@click.option("--hostname", "-n", help="Celery node name (default zstagger@<host>).")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.option("--pool", type=click.Choice(["prefork", "solo"]), default="prefork", show_default=True,
              help="prefork: model loaded in each forked process; solo: in this process (debugging).")
def worker(concurrency, queues, model, precision, device, hostname, loglevel, pool):
    """Run a Celery worker that tags queued images (warm shutdown on SIGTERM)."""
    import os

    for key, value in (("MODEL", model), ("PRECISION", precision), ("DEVICE", device),
                       ("QUEUES", queues), ("CONCURRENCY", concurrency)):
        if value is not None:
            os.environ[f"ZSTAGGER_{key}"] = str(value)
    settings = Settings()
    from ..errors import ZstaggerError, exit_code
    from ..extras import check_installed
    from ..runtimes import check_available, required_modules

    try:  # before forking: a missing model, torch or a bad ZSTAGGER_STORE is one clear line, not a pool of failing processes
        check_installed(*required_modules(settings.model))
        check_available(settings.model)
        if settings.store:
            from ..store import open_store

            open_store(settings.store, timeout=settings.store_timeout).close()  # checks the URL and the extra; connects to nothing
    except ZstaggerError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exit_code(exc))
    from ..queue.celery_app import app

    argv = ["worker", f"--loglevel={loglevel}", f"--concurrency={settings.concurrency}",
            f"--queues={','.join(settings.queues)}", f"--pool={pool}"]
    argv += [f"--hostname={hostname}"] if hostname else ["--hostname=zstagger@%h"]
    # What app.worker_main() does, except that it drops Celery's exit status: a worker that
    # stopped on an error would exit 0 and not be restarted by Restart=on-failure.
    from celery.bin.celery import celery as celery_command

    celery_command.params[0].default = app  # the --app option
    celery_command.main(args=argv, prog_name="zstagger", standalone_mode=True)  # exits with the worker's status


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@several_taxonomies_options
@click.option("--chunk-size", type=click.IntRange(min=1, max=1024), help="Images per task (ZSTAGGER_CHUNK_SIZE, default 32).")
@click.option("--queue", default="bulk", show_default=True, help="interactive or bulk (or any queue your workers consume).")
@click.option("--top-k", type=click.IntRange(min=1), help="Keep only the K best scores per image.")
@click.option("--upload", is_flag=True, help="Send local files' bytes instead of their paths (workers on other machines).")
@click.option("--callback-url", help="POST a signed event here when the job is done or cancelled (ZSTAGGER_WEBHOOK_SECRET).")
@click.option("--jsonl", "stdin_items", is_flag=True,
              help='With -: stdin is a JSON Lines item list ({"image": ..., "text": ...} a line), not references.')
@click.option("--sink", help="Also write each finished chunk's results here: s3://bucket/results/ (JSON Lines, one "
              "file per chunk), a directory, or an https URL (a signed event per chunk).")
@reports_errors
def enqueue(inputs, taxonomies, labels, template, chunk_size, queue, top_k, upload, callback_url, stdin_items, sink):
    """Enqueue images for the workers; prints the job id.

    Paths are sent as absolute paths and read by the workers: they must see the same
    files at the same paths (shared storage). Otherwise use --upload, URLs, or object-store
    URLs (s3://bucket/key.jpg; s3://bucket/prefix/ for everything under a prefix, listed a
    page per chunk), read with the workers' own credentials.
    Several -t and item lists (*.jsonl, with text) work as for `tag`.
    """
    from ..images import expand_inputs
    from ..queue.client import enqueue as enqueue_images
    from ..queue.client import load_refs_for_upload

    taxonomy, several = one_or_several(taxonomies, labels, template)
    settings = Settings()
    refs = list(expand_inputs(read_references(inputs, jsonl=stdin_items)))
    if upload:
        refs = list(load_refs_for_upload(refs, settings.max_upload_bytes))
    job = enqueue_images(refs, taxonomy, labels=labels.split(",") if labels else None, template=template,
                         top_k=top_k, chunk_size=chunk_size, queue=queue, callback_url=callback_url, sink=sink,
                         settings=settings, taxonomies=several)
    click.echo(job.id)


@cli.command()
@click.argument("job_id")
@reports_errors
def status(job_id):
    """Print a job's progress as JSON: state, total, done, failed, pending."""
    from ..queue.client import Job

    click.echo(json.dumps(Job(job_id).status()))


@cli.command()
@click.argument("job_id")
@reports_errors
def cancel(job_id):
    """Cancel a job: chunks not yet started are skipped; prints its status as JSON.

    Results already stored stay available; the job's webhook is sent with state
    "cancelled". A job that is already done is left as it is.
    """
    from ..queue.client import Job

    click.echo(json.dumps(Job(job_id).cancel()))


@cli.command()
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Block until the job is done (riding out Redis outages until --timeout).")
@click.option("--timeout", type=click.FloatRange(min=0), help="With --wait: give up after S seconds (exit 3).")
@reports_errors
def results(job_id, wait, timeout):
    """Print a job's results as JSON Lines, in input order (same schema as `tag`).

    Exit 0 all tagged, 1 some inputs failed, 3 not finished (--wait timed out, the job
    is still running without --wait, or it was cancelled: the finished results are printed).
    """
    from ..queue.client import Job

    job = Job(job_id)

    def redis_away(exc):
        click.echo(f"{exc} Still waiting" + (f" (at most {timeout:g}s in all)." if timeout is not None else "."), err=True)

    # A wait that times out (JobTimeout) exits 3, as the table of errors says.
    state = job.wait(timeout, on_unavailable=redis_away) if wait else job.status()
    with reader_may_leave():
        for line in job.result_lines():
            click.echo(line)
    if state["state"] != "done":
        click.echo(f"job {job_id} is {state['state']}: {state['pending']} of {state['total']} inputs pending", err=True)
        sys.exit(EXIT_TIMEOUT)
    sys.exit(EXIT_FAILED_INPUTS if state["failed"] else EXIT_OK)


@cli.command()
@click.option("--worker", "worker_name", help="Celery node name, e.g. zstagger@$(hostname) (default: any worker).")
@click.option("--local", is_flag=True, help="Liveness on this machine: the worker's heartbeat file is fresh (no Redis needed).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=2.0, show_default=True, help="Seconds to wait for a ping reply.")
def health(worker_name, local, timeout):
    """Exit 0 if Redis answers and a worker has its model loaded and answers; else 1 and why.

    For probes: readiness `zstagger health --worker zstagger@$(hostname)`, liveness the
    same with --local.
    """
    from ..queue.health import check_health, check_local

    settings = Settings()
    if local:
        if not worker_name:
            raise click.UsageError("--local needs --worker NAME")
        ok, reason = check_local(settings, worker_name)
    else:
        ok, reason = check_health(settings, worker_name, timeout)
    if ok:
        click.echo(f"ok: {reason}")
        sys.exit(EXIT_OK)
    click.echo(f"not ready: {reason}", err=True)
    sys.exit(1)


@cli.command("queue-stats")
@reports_errors
def queue_stats():
    """Print queue depth (chunks waiting per queue), unacknowledged chunks and live workers as JSON."""
    from ..queue.health import queue_stats as stats

    click.echo(json.dumps(stats(Settings())))

