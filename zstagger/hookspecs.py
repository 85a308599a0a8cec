"""Every hook a zstagger plugin can implement.

A plugin is a module (or object) with functions decorated by ``@zstagger.hookimpl`` whose
names match the specs below. Third-party packages expose theirs through the ``zstagger``
entry-point group::

    [project.entry-points.zstagger]
    my_taxonomies = "my_package.plugin"
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    import click

    from .taxonomy import Taxonomy

hookspec = pluggy.HookspecMarker("zstagger")
hookimpl = pluggy.HookimplMarker("zstagger")


@hookspec
def register_taxonomies(register: Callable[[Taxonomy], None]) -> None:
    """Register taxonomies that ``zstagger tag -t NAME`` and the Python API can use.

    Call ``register(taxonomy)`` once for each :class:`zstagger.Taxonomy` (or for a dict
    with the same fields). A taxonomy's name must be unique across all plugins.

    :param register: callback accepting one taxonomy per call.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``zstagger`` command line.

    :param cli: the top-level click group; use ``@cli.command()`` to add a command.
    """
