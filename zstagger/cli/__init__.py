"""The ``zstagger`` command line: one module per area, all on the group in :mod:`.common`.

Machine-readable output goes to stdout, progress and errors to stderr (exit codes in
:mod:`.common`).
"""

from __future__ import annotations

import sys

import click

from . import evaluation, queue, tagging, taxonomies  # noqa: F401  (each module adds its commands)
from .common import EXIT_USAGE, cli

__all__ = ["cli", "main"]


def main() -> None:
    from ..errors import PluginError, TaxonomyError
    from ..plugins import load_plugins, pm

    try:
        load_plugins()
        pm.hook.register_commands(cli=cli)
    except (PluginError, TaxonomyError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    cli(prog_name="zstagger")

