"""Scheme -> sink, from every plugin's ``register_result_sinks``; the check a ``--sink`` URL passes.

A sink URL is checked where the job is made (the CLI, Python's enqueue, the HTTP API) and
again by the worker before each write: a scheme some sink serves, no credentials in it, and
inside ``ZSTAGGER_SINK_ALLOW`` when that names any location (required for jobs arriving over
HTTP, as ``ZSTAGGER_SOURCE_ALLOW`` is for their images).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .. import plugins
from ..errors import PluginError, SourceRefusedError
from ..sources.access import check_reference, scheme_of
from .base import ResultSink


@dataclass(frozen=True)
class RegisteredSink:
    sink: ResultSink
    plugin: str


_lock = threading.Lock()
_cache: tuple[int, dict[str, RegisteredSink]] | None = None


def registered_sinks() -> dict[str, RegisteredSink]:
    global _cache
    plugins.load_plugins()
    generation = plugins.generation()
    with _lock:
        if _cache is None or _cache[0] != generation:
            _cache = (generation, _collect())
        return _cache[1]


def _collect() -> dict[str, RegisteredSink]:
    found: dict[str, RegisteredSink] = {}
    for impl in plugins.pm.hook.register_result_sinks.get_hookimpls():

        def add(sink: ResultSink, _plugin: str = impl.plugin_name) -> None:
            schemes = getattr(sink, "schemes", None)
            if not schemes or isinstance(schemes, str) or not callable(getattr(sink, "write", None)):
                raise PluginError(f"plugin {_plugin} registered {sink!r}, which is not a result sink "
                                  "(it needs a tuple `schemes` and a `write(url, job_id, chunk, lines)` method)")
            for scheme in schemes:
                scheme = scheme.lower().rstrip(":/")
                if scheme in found:
                    raise PluginError(f"result sink scheme {scheme!r} is registered twice: by {found[scheme].plugin} "
                                      f"and by {_plugin}; block one with ZSTAGGER_BLOCK_PLUGINS")
                found[scheme] = RegisteredSink(sink, _plugin)

        try:
            impl.function(register=add)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin {impl.plugin_name} failed while registering result sinks: {exc!r}") from exc
    return found


def sink_for(url: str) -> ResultSink:
    scheme = scheme_of(url) or "file"
    found = registered_sinks().get(scheme)
    if found is None:
        known = ", ".join(f"{name}://" for name in sorted(registered_sinks())) or "none"
        raise SourceRefusedError(f"no result sink writes to {scheme}:// URLs (sinks: {known})")
    return found.sink


def check_sink(url: str, allow: list[str] | tuple[str, ...], *, trusted: bool = True) -> str:
    """``url`` if results may be written there, else a SourceRefusedError saying why."""
    if not isinstance(url, str) or not url.strip() or any(c in url for c in "\0\n\r"):
        raise SourceRefusedError(f"malformed sink URL {url!r}")
    scheme = scheme_of(url)
    if scheme in ("", "file"):
        if not trusted:
            raise SourceRefusedError("a sink on the server's own file system is refused over HTTP")
    elif scheme not in ("http", "https"):
        check_reference(url, allow, trusted=trusted, what="write")
    sink_for(url)
    return url
