"""Every hook a zstagger plugin can implement.

A plugin is a module (or object) with functions decorated by ``@zstagger.hookimpl`` whose
names match the specs below. Third-party packages expose theirs through the ``zstagger``
entry-point group::

    [project.entry-points.zstagger]
    my_taxonomies = "my_package.plugin"
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

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


@hookspec
def register_image_sources(register: Callable[[Any], None]) -> None:
    """Register sources that read images by URL scheme (``s3://``, ``myscheme://``).

    Call ``register(source)`` once per source. A source has ``schemes`` (a tuple of scheme
    names it serves) and ``open(url, request)``, returning the object's bytes (or a binary
    file object) within ``request.max_bytes`` and before ``request.deadline``; optionally
    ``list(prefix, page_size, start_after)``, yielding pages of
    :class:`zstagger.sources.ObjectInfo` (with ``order_key(url)`` if the store does not list in
    the order of Python's strings: a worker re-listing a page compares keys with it), and
    ``version(url, request)``. zstagger applies the
    size cap, time budget, allow-list and error records around every call. A scheme must be
    unique across all plugins; the built-ins (files, http(s), data:, s3, gs, az) are plugins too.

    :param register: callback accepting one source per call (a :class:`zstagger.sources.ImageSource`).
    """


@hookspec
def register_result_sinks(register: Callable[[Any], None]) -> None:
    """Register sinks: where a job's finished results go besides Redis (``--sink URL``).

    Call ``register(sink)`` once per sink. A sink has ``schemes`` (the URL schemes of
    ``--sink`` it serves) and ``write(url, job_id, chunk, lines)``, called once per finished
    chunk with that chunk's result lines (JSON, each with a stable ``index``); a chunk
    delivered again is written again with the same name and lines, so ``write`` must be
    idempotent (overwrite, never append). Delivery is at least once.

    :param register: callback accepting one sink per call (a :class:`zstagger.sinks.ResultSink`).
    """
