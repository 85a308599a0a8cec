"""Pieces every ``zstagger`` command shares: the group, exit codes, options, error reporting.

Machine-readable output goes to stdout, progress and errors to stderr. Exit codes:
0 success, 1 some inputs failed (every result is still printed), 2 usage or
configuration errors (unknown taxonomy, bad option, model not found), 3 not finished
(a wait timed out), 130 interrupted (Ctrl-C), 141 the reader closed stdout early, 143
stopped by SIGTERM (where a command unwinds on it, like `tag`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable

import click

from ..errors import EXIT_TIMEOUT, EXIT_USAGE, ZstaggerError, exit_code  # noqa: F401  (the codes, re-exported)
from ..settings import PRECISIONS

EXIT_OK, EXIT_FAILED_INPUTS = 0, 1  # EXIT_USAGE (2) and EXIT_TIMEOUT (3) come with the table of errors
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a writer killed by SIGPIPE
EXIT_INTERRUPTED = 128 + 2  # Ctrl-C, as a shell reports a process stopped by SIGINT
EXIT_TERMINATED = 128 + 15  # SIGTERM, as a shell reports a process stopped by it


class Terminated(Exception):
    """SIGTERM arrived (a service manager, a container runtime or `kill` stopping the command)."""


@contextlib.contextmanager
def unwinds_on_sigterm():
    """SIGTERM unwinds the block like Ctrl-C does (every ``with`` closes: a tagger writes what
    it has not yet told the embedding store), then the command exits 143. A second SIGTERM
    while unwinding stops the process at once, as SIGTERM does by default."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread can take signals
        yield
        return

    def unwind(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    except Terminated:
        click.echo("terminated", err=True)
        sys.exit(EXIT_TERMINATED)
    finally:
        signal.signal(signal.SIGTERM, previous)


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
    """Turn zstagger's own errors into one clear line on stderr and the exit code the table
    of errors gives them (2, or 3 for a wait that timed out); so is a package missing from
    this install (named, with the pip command that installs it: exit 2)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ZstaggerError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exit_code(exc))
        except ImportError as exc:
            from ..extras import missing_from

            click.echo(f"Error: {missing_from(exc)}", err=True)
            sys.exit(EXIT_USAGE)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="zstagger")
def cli() -> None:
    """Zero-shot image tagging with CLIP-family models and pluggable taxonomies."""


def read_references(inputs: Iterable[str], jsonl: bool = False) -> list:
    """Command-line inputs, with ``-`` replaced by the references on stdin (one per line).

    stdin is read as bytes and decoded as file names are (``os.fsdecode``), so a path that
    is not UTF-8 (``find`` prints them as they are) names the same file, like argv does.

    An input named ``*.jsonl`` / ``*.ndjson`` is a list of items, one JSON object a line:
    ``{"image": "path or URL", "text": "product title / description"}`` (text optional; a
    relative path is relative to the list's folder); ``-`` with ``jsonl`` reads one from stdin
    (relative paths: to the current directory). A malformed line is a usage error, before
    anything is read.
    """
    from ..images import ITEM_LIST_SUFFIXES

    refs: list = []
    for item in inputs:
        if item == "-":
            if jsonl:
                refs.extend(_item_list(sys.stdin.buffer, "stdin", ""))
            else:
                refs.extend(os.fsdecode(line.strip()) for line in sys.stdin.buffer if line.strip())
        elif item.lower().endswith(ITEM_LIST_SUFFIXES) and os.path.isfile(item):
            try:
                with open(item, "rb") as fh:
                    refs.extend(_item_list(fh, item, os.path.dirname(item)))
            except OSError as exc:
                raise click.UsageError(f"cannot read the item list {item}: {exc.strerror or exc}") from None
        else:
            refs.append(item)
    return refs


def _item_list(lines, name: str, base: str) -> list:
    """The items of a JSON Lines list (see :func:`read_references`), each line bounded."""
    import json

    from ..images import MAX_ITEM_LINE_BYTES, ImageWithText, is_url, item_from_json

    items = []
    number = 0
    while True:
        line = lines.readline(MAX_ITEM_LINE_BYTES + 1)
        if not line:
            return items
        number += 1
        where = f"{name} line {number}"
        if len(line) > MAX_ITEM_LINE_BYTES:
            raise click.UsageError(f"{where} is over {MAX_ITEM_LINE_BYTES:,} bytes: an item is an image reference "
                                   "and a short text (ZSTAGGER_MAX_TEXT_CHARS)")
        if not line.strip():
            continue
        try:
            item = item_from_json(json.loads(line), where)
        except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            message = str(exc) if str(exc).startswith(where) else f"{where}: not JSON ({str(exc).split(':')[0]})"
            raise click.UsageError(message) from None
        image = item.image if isinstance(item, ImageWithText) else item
        if base and not is_url(image) and not os.path.isabs(image):
            image = os.path.join(base, image)
            item = ImageWithText(image, item.text) if isinstance(item, ImageWithText) else image
        items.append(item)


def require_some_input_exists(refs: list) -> None:
    """Exit 2 at once, before any model loads, when not one of the inputs can exist.

    Inputs that are URLs or bytes count as existing; a mix of found and missing files goes
    on (the missing ones become error records, exit 1).
    """
    from ..images import is_url

    local = [ref for ref in refs if isinstance(ref, (str, os.PathLike)) and not is_url(ref)]
    if len(local) < len(refs) or not refs:
        return
    if not any(os.path.lexists(ref) for ref in local):
        first = local[0]
        more = f" (and {len(local) - 1} more)" if len(local) > 1 else ""
        raise click.UsageError(f"no such file: {first}{more}; nothing to tag")


def announce_model_load(model: str | None) -> None:
    """One line on stderr while the model loads (several seconds), when a person is watching."""
    if sys.stderr.isatty():
        from ..settings import Settings

        click.echo(f"loading model {model or Settings().model} ...", err=True)


def taxonomy_options(func: Callable) -> Callable:
    """-t/--taxonomy or --labels (+ --template), shared by every command that tags."""
    func = click.option("--template", help='Template for --labels, with {} for the label. Default: "This is a photo of {}."')(func)
    func = click.option("--labels", help='Comma-separated ad-hoc labels, e.g. "cat,dog,bird" (like the HF pipeline).')(func)
    func = click.option("-t", "--taxonomy", help="Name of a registered taxonomy (see `zstagger taxonomies`).")(func)
    return func


def several_taxonomies_options(func: Callable) -> Callable:
    """:func:`taxonomy_options` where -t may be given several times: every image is read and
    encoded once and scored against each taxonomy (``tag``, ``enqueue``)."""
    func = click.option("--template", help='Template for --labels, with {} for the label. Default: "This is a photo of {}."')(func)
    func = click.option("--labels", help='Comma-separated ad-hoc labels, e.g. "cat,dog,bird" (like the HF pipeline).')(func)
    func = click.option("-t", "--taxonomy", "taxonomies", multiple=True,
                        help="Name of a registered taxonomy (see `zstagger taxonomies`); repeat it for several in one "
                        "pass (one result line per image, each taxonomy's result under its name).")(func)
    return func


def one_or_several(taxonomies: tuple[str, ...], labels: str | None, template: str | None) -> tuple[str | None, list[str] | None]:
    """(the one taxonomy, or None) and (several taxonomies, or None) from repeated -t options."""
    if len(taxonomies) > 1:
        if labels is not None or template is not None:
            raise click.UsageError("several -t/--taxonomy go without --labels and --template")
        if len(set(taxonomies)) < len(taxonomies):
            raise click.UsageError("a taxonomy is given twice with -t")
        return None, list(taxonomies)
    taxonomy = taxonomies[0] if taxonomies else None
    check_taxonomy_choice(taxonomy, labels, template)
    return taxonomy, None


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



def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in columns}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        click.echo("  ".join(str(row[c]).ljust(widths[c]) for c in columns).rstrip())

