"""The ``zstagger`` command line: one module per area, all on the group in :mod:`.common`.

Machine-readable output goes to stdout, progress and errors to stderr (exit codes in
:mod:`.common`).
"""

from __future__ import annotations

import logging
import sys

import click

from . import evaluation, examples, explain, queue, review, runtime, service, store, tagging, taxonomies  # noqa: F401  (each module adds its commands)
from .common import EXIT_INTERRUPTED, EXIT_OK, cli

__all__ = ["cli", "main"]


def main() -> None:
    from ..errors import PluginError, TaxonomyError, exit_code
    from ..plugins import add_commands

    _library_logs_in_one_line()
    try:
        add_commands(cli)
    except (PluginError, TaxonomyError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exit_code(exc))
    try:
        # Not click's standalone mode: it turns Ctrl-C into exit 1, which here means
        # "some inputs failed".
        code = cli.main(prog_name="zstagger", standalone_mode=False)
    except KeyboardInterrupt:
        code = _interrupted()
    except click.exceptions.Abort:  # click's own wrapping of Ctrl-C/EOF at a prompt
        code = _interrupted()
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    sys.exit(code if isinstance(code, int) else EXIT_OK)


def _interrupted() -> int:
    click.echo("interrupted", err=True)
    return EXIT_INTERRUPTED


#: Libraries that log an error zstagger also reports (as a record or a one-line error), with its traceback.
_CHATTY = ("gcsfs", "adlfs", "s3fs", "fsspec", "aiobotocore", "botocore", "azure")


class _NoTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = " ".join(record.getMessage().split())[:500], ()
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def _library_logs_in_one_line() -> None:
    """Warnings of the object-store libraries on stderr as one line each: gcsfs, for one,
    logs a traceback for a refused listing that zstagger already reports in one line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.addFilter(_NoTraceback())
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    for name in _CHATTY:
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.propagate = False
