"""The ``zstagger`` command line.

Machine-readable output goes to stdout, progress and errors to stderr. Exit codes:
0 success, 1 some inputs failed (every result is still printed), 2 usage or
configuration errors (unknown taxonomy, bad option, model not found).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterable

import click

from .errors import ZstaggerError
from .settings import PRECISIONS, Settings

EXIT_OK, EXIT_FAILED_INPUTS, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a writer killed by SIGPIPE


@contextlib.contextmanager
def reader_may_leave():
    """`zstagger tag ... | head`: stop quietly with 141, not 1 ("some inputs failed").

    SIGPIPE stays ignored (Python's default) so that a dropped network socket raises
    instead of killing the process; only a closed stdout ends the command.
    """
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        sys.exit(EXIT_BROKEN_PIPE)


def reports_errors(func: Callable) -> Callable:
    """Turn zstagger's own errors into one clear line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ZstaggerError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(EXIT_USAGE)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="zstagger")
def cli() -> None:
    """Zero-shot image tagging with CLIP-family models and pluggable taxonomies."""


def read_references(inputs: Iterable[str]) -> list[str]:
    """Command-line inputs, with ``-`` replaced by the references on stdin (one per line)."""
    refs: list[str] = []
    for item in inputs:
        if item == "-":
            refs.extend(line.strip() for line in sys.stdin if line.strip())
        else:
            refs.append(item)
    return refs


def taxonomy_options(func: Callable) -> Callable:
    """-t/--taxonomy or --labels (+ --template), shared by every command that tags."""
    func = click.option("--template", help='Template for --labels, with {} for the label. Default: "This is a photo of {}."')(func)
    func = click.option("--labels", help='Comma-separated ad-hoc labels, e.g. "cat,dog,bird" (like the HF pipeline).')(func)
    func = click.option("-t", "--taxonomy", help="Name of a registered taxonomy (see `zstagger taxonomies`).")(func)
    return func


def check_taxonomy_choice(taxonomy: str | None, labels: str | None, template: str | None) -> None:
    if (taxonomy is None) == (labels is None):
        raise click.UsageError("give exactly one of -t/--taxonomy NAME or --labels 'a,b,c'")
    if template is not None and labels is None:
        raise click.UsageError("--template only applies to --labels; a taxonomy brings its own templates")
    if labels is not None and not [label for label in labels.split(",") if label.strip()]:
        raise click.UsageError("--labels needs at least one label")


def model_options(func: Callable) -> Callable:
    func = click.option("--precision", type=click.Choice(PRECISIONS), help="Default: auto (ZSTAGGER_PRECISION).")(func)
    func = click.option("--device", help="auto, cpu, cuda, cuda:N or mps. Default: auto (ZSTAGGER_DEVICE).")(func)
    func = click.option("--batch-size", type=click.IntRange(min=1), help="Images per forward pass (ZSTAGGER_BATCH_SIZE).")(func)
    func = click.option("--model", help="Hub id or local checkpoint directory (ZSTAGGER_MODEL).")(func)
    return func


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@taxonomy_options
@model_options
@click.option("--top-k", type=click.IntRange(min=1), help="Report only the K best scores per image.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "table"]), help="Default: table on a terminal, jsonl otherwise.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when stderr is a terminal).")
@reports_errors
def tag(inputs, taxonomy, labels, template, model, batch_size, device, precision, top_k, fmt, progress):
    """Tag images: files, directories, http(s) URLs, or - for references on stdin.

    \b
    zstagger tag photos/ -t moderation
    zstagger tag cat.jpg --labels "cat,dog,bird"
    find /data -name '*.jpg' | zstagger tag - -t ecommerce --format jsonl
    """
    from .images import expand_inputs
    from .tagger import Tagger

    check_taxonomy_choice(taxonomy, labels, template)
    fmt = fmt or ("table" if sys.stdout.isatty() else "jsonl")
    spec = Tagger.resolve(taxonomy, labels.split(",") if labels else None, template)  # fail fast, before the model loads
    refs = list(expand_inputs(read_references(inputs)))
    if not refs:
        raise click.UsageError("no images found in the given inputs")
    tagger = Tagger(model, device=device, precision=precision, batch_size=batch_size)
    failed = 0
    show = progress if progress is not None else sys.stderr.isatty()
    from tqdm import tqdm

    with reader_may_leave(), tagger, tqdm(total=len(refs), unit="img", file=sys.stderr, disable=not show, desc="tagging") as bar:
        for result in tagger.tag_iter(refs, spec, top_k=top_k):
            failed += result.error is not None
            bar.update(1)
            line = result.model_dump_json() if fmt == "jsonl" else format_row(result)
            if show:
                bar.write(line, file=sys.stdout)  # keeps the bar below the output on a terminal
            else:
                click.echo(line)
    if failed:
        click.echo(f"{failed} of {len(refs)} inputs could not be tagged (see their error fields)", err=True)
    sys.exit(EXIT_FAILED_INPUTS if failed else EXIT_OK)


def format_row(result) -> str:
    if result.error is not None:
        return f"{result.image}\n  ERROR {result.error.type}: {result.error.message}"
    head = f"{result.image}"
    if result.verdict is not None:
        head += f"  verdict={result.verdict}"
    head += f"  tags={', '.join(result.tags) or '-'}"
    scores = "  ".join(f"{s.label}={s.score:.3f}" for s in result.scores[:5])
    return f"{head}\n  {scores}"


EXIT_TIMEOUT = 3


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
    from .engine.locate import check_available
    from .errors import ZstaggerError

    try:  # before forking: a missing model is one clear line, not a pool of failing processes
        check_available(settings.model)
    except ZstaggerError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    from .queue.celery_app import app

    argv = ["worker", f"--loglevel={loglevel}", f"--concurrency={settings.concurrency}",
            f"--queues={','.join(settings.queues)}", f"--pool={pool}"]
    argv += [f"--hostname={hostname}"] if hostname else ["--hostname=zstagger@%h"]
    app.worker_main(argv)


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@taxonomy_options
@click.option("--chunk-size", type=click.IntRange(min=1, max=1024), help="Images per task (ZSTAGGER_CHUNK_SIZE, default 32).")
@click.option("--queue", default="bulk", show_default=True, help="interactive or bulk (or any queue your workers consume).")
@click.option("--top-k", type=click.IntRange(min=1), help="Keep only the K best scores per image.")
@click.option("--upload", is_flag=True, help="Send local files' bytes instead of their paths (workers on other machines).")
@reports_errors
def enqueue(inputs, taxonomy, labels, template, chunk_size, queue, top_k, upload):
    """Enqueue images for the workers; prints the job id."""
    from .images import expand_inputs
    from .queue.client import enqueue as enqueue_images
    from .queue.client import load_refs_for_upload

    check_taxonomy_choice(taxonomy, labels, template)
    settings = Settings()
    refs = list(expand_inputs(read_references(inputs)))
    if upload:
        refs = list(load_refs_for_upload(refs, settings.max_upload_bytes))
    job = enqueue_images(refs, taxonomy, labels=labels.split(",") if labels else None, template=template,
                         top_k=top_k, chunk_size=chunk_size, queue=queue, settings=settings)
    click.echo(job.id)


@cli.command()
@click.argument("job_id")
@reports_errors
def status(job_id):
    """Print a job's progress as JSON: state, total, done, failed, pending."""
    from .queue.client import Job

    click.echo(json.dumps(Job(job_id).status()))


@cli.command()
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Block until the job is done.")
@click.option("--timeout", type=click.FloatRange(min=0), help="With --wait: give up after S seconds (exit 3).")
@reports_errors
def results(job_id, wait, timeout):
    """Print a job's results as JSON Lines, in input order (same schema as `tag`).

    Exit 0 all tagged, 1 some inputs failed, 3 not finished (--wait timed out, or the
    job is still running without --wait: the finished results are printed).
    """
    from .queue.client import Job, JobTimeout

    job = Job(job_id)
    try:
        state = job.wait(timeout) if wait else job.status()
    except JobTimeout as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_TIMEOUT)
    with reader_may_leave():
        for line in job.result_lines():
            click.echo(line)
    if state["state"] != "done":
        click.echo(f"job {job_id} is {state['state']}: {state['pending']} of {state['total']} inputs pending", err=True)
        sys.exit(EXIT_TIMEOUT)
    sys.exit(EXIT_FAILED_INPUTS if state["failed"] else EXIT_OK)


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
    from .bench import dump, format_table, run_bench

    if taxonomy is None and labels is None:
        taxonomy = "moderation"
    check_taxonomy_choice(taxonomy, labels, template)
    report = run_bench(
        model or Settings().model, images, taxonomy, labels.split(",") if labels else None,
        batch_size=batch_size, repeats=repeats, log=lambda msg: click.echo(f"bench: {msg}...", err=True),
    )
    click.echo(dump(report) if as_json else format_table(report))


@cli.command()
@click.option("--worker", "worker_name", help="Celery node name, e.g. zstagger@$(hostname) (default: any worker).")
@click.option("--local", is_flag=True, help="Liveness on this machine: the worker's heartbeat file is fresh (no Redis needed).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=2.0, show_default=True, help="Seconds to wait for a ping reply.")
def health(worker_name, local, timeout):
    """Exit 0 if Redis answers and a worker has its model loaded and answers; else 1 and why.

    For probes: readiness `zstagger health --worker zstagger@$(hostname)`, liveness the
    same with --local.
    """
    from .queue.monitoring import check_health, check_local

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
    from .queue.monitoring import queue_stats as stats

    click.echo(json.dumps(stats(Settings())))


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@click.pass_context
@reports_errors
def taxonomies(ctx, as_json):
    """List registered taxonomies (name, mode, labels, plugin)."""
    if ctx.invoked_subcommand is not None:
        return
    from .plugins import registered_taxonomies

    rows = [
        {"name": name, "mode": e.taxonomy.mode, "labels": len(e.taxonomy.labels), "plugin": e.origin,
         "version": e.taxonomy.version, "fingerprint": e.taxonomy.fingerprint}
        for name, e in sorted(registered_taxonomies().items())
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    print_table(rows, ["name", "mode", "labels", "plugin"])


@taxonomies.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the validated spec as JSON.")
@reports_errors
def taxonomies_show(name, as_json):
    """Show one taxonomy's spec."""
    from .plugins import get_taxonomy

    spec = get_taxonomy(name)
    if as_json:
        click.echo(spec.model_dump_json(indent=2))
        return
    click.echo(f"{spec.name} v{spec.version} ({spec.mode}-label, fingerprint {spec.fingerprint})")
    if spec.description:
        click.echo(f"  {spec.description}")
    click.echo("templates: " + " | ".join(spec.templates))
    rows = [
        {"label": label.name, "parent": label.parent or "", "threshold": f"{spec.threshold_of(label):.2f}",
         "action": label.action or "", "background": "yes" if label.background else ""}
        for label in spec.labels
    ]
    print_table(rows, ["label", "parent", "threshold", "action", "background"])


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@reports_errors
def plugins(as_json):
    """List loaded plugins and the hooks each implements."""
    from .plugins import plugin_hooks

    rows = plugin_hooks()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    print_table([dict(r, hooks=", ".join(r["hooks"]), builtin="yes" if r["builtin"] else "") for r in rows],
                ["name", "hooks", "builtin"])


@cli.command("settings")
@reports_errors
def show_settings():
    """Print the configuration in effect (from ZSTAGGER_* variables and defaults) as JSON."""
    click.echo(Settings().model_dump_json(indent=2))


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in columns}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        click.echo("  ".join(str(row[c]).ljust(widths[c]) for c in columns).rstrip())


def main() -> None:
    from .errors import PluginError, TaxonomyError
    from .plugins import load_plugins, pm

    try:
        load_plugins()
        pm.hook.register_commands(cli=cli)
    except (PluginError, TaxonomyError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    cli(prog_name="zstagger")


if __name__ == "__main__":
    main()
