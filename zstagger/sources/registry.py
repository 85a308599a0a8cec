"""Scheme -> source: what every plugin's ``register_image_sources`` registers, cached.

Built from the plugins once and kept until a plugin is registered or unregistered. Two
plugins claiming one scheme are an error naming both (block one with ZSTAGGER_BLOCK_PLUGINS).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .. import plugins
from ..errors import PluginError, SourceRefusedError
from .base import ImageSource


@dataclass(frozen=True)
class RegisteredSource:
    source: ImageSource
    plugin: str


_lock = threading.Lock()
_cache: tuple[int, dict[str, RegisteredSource]] | None = None


def registered_sources() -> dict[str, RegisteredSource]:
    """Every registered scheme, with its source and the plugin that registered it."""
    global _cache
    plugins.load_plugins()
    generation = plugins.generation()
    with _lock:
        if _cache is None or _cache[0] != generation:
            _cache = (generation, _collect())
        return _cache[1]


def _collect() -> dict[str, RegisteredSource]:
    found: dict[str, RegisteredSource] = {}
    for impl in plugins.pm.hook.register_image_sources.get_hookimpls():  # in registration order

        def add(source: ImageSource, _plugin: str = impl.plugin_name) -> None:
            schemes = getattr(source, "schemes", None)
            if not schemes or isinstance(schemes, str) or not callable(getattr(source, "open", None)):
                raise PluginError(f"plugin {_plugin} registered {source!r}, which is not an image source "
                                  "(it needs a tuple `schemes` and an `open(url, request)` method)")
            for scheme in schemes:
                scheme = scheme.lower().rstrip(":/")
                if scheme in found:
                    raise PluginError(f"image source scheme {scheme!r} is registered twice: by {found[scheme].plugin} "
                                      f"and by {_plugin}; block one with ZSTAGGER_BLOCK_PLUGINS")
                found[scheme] = RegisteredSource(source, _plugin)

        try:
            impl.function(register=add)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin {impl.plugin_name} failed while registering image sources: {exc!r}") from exc
    return found


def source_for(scheme: str) -> ImageSource:
    """The source of ``scheme`` ('' and 'file': local files), or a SourceRefusedError naming the schemes there are."""
    found = registered_sources().get(scheme or "file")
    if found is None:
        known = ", ".join(f"{name}://" for name in sorted(registered_sources()) if name != "data") or "none"
        raise SourceRefusedError(f"no image source reads {scheme}:// references (sources: {known}, data:); "
                                 "install the cloud's extra (zstagger[s3], [gcs], [azure]) or a plugin for it")
    return found.source


def is_listable(scheme: str) -> bool:
    found = registered_sources().get(scheme or "file")
    return found is not None and callable(getattr(found.source, "list", None))
