"""The plugin manager: built-in and third-party plugins, loaded the same way. Nothing else.

Built-in taxonomies are plugins listed in :data:`BUILTIN_PLUGINS`. Third-party ones come
from the ``zstagger`` entry-point group, ``*.py`` files in ``ZSTAGGER_PLUGINS_DIR``, and
taxonomy files (YAML/JSON) in ``ZSTAGGER_TAXONOMY_PATH``. ``ZSTAGGER_BLOCK_PLUGINS`` (comma
separated) blocks plugins by name; ``ZSTAGGER_LOAD_PLUGINS`` names the installed (entry-point)
plugins to load, all of them when unset and none when empty (what the test suite sets, in
its own process and every process it starts). Two plugins adding a command of the same
name are an error naming both (:func:`add_commands`). Loading is lazy (:func:`load_plugins`) so importing
zstagger, or forking a Celery worker, does no plugin work. What the plugins register is
looked up through :mod:`zstagger.registry`, which caches it until the plugins change
(:func:`generation`).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import re
import threading
from pathlib import Path
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .settings import Settings

BUILTIN_PLUGINS = (
    "zstagger.builtin.moderation",
    "zstagger.builtin.ecommerce",
    "zstagger.builtin.medical",
    "zstagger.builtin.taxonomy_files",
    "zstagger.sources.builtin",
    "zstagger.sources.objectstore",
    "zstagger.sinks.jsonl",
    "zstagger.sinks.webhook",
)
ENTRY_POINT_GROUP = "zstagger"



class _PluginManager(pluggy.PluginManager):
    """pluggy's manager, counting changes so that caches of what plugins register can expire."""

    generation = 0

    def register(self, plugin, name=None):
        registered = super().register(plugin, name)
        type(self).generation += 1
        return registered

    def unregister(self, plugin=None, name=None):
        removed = super().unregister(plugin, name)
        type(self).generation += 1
        return removed


pm = _PluginManager("zstagger")
pm.add_hookspecs(hookspecs)

_loaded = False
_lock = threading.Lock()


def load_plugins(settings: Settings | None = None) -> None:
    """Register built-in plugins, entry points and the plugins directory (once per process)."""
    global _loaded
    with _lock:
        if _loaded:
            return
        settings = settings or Settings()
        for name in settings.block_plugins:
            pm.set_blocked(name)
        for module_name in BUILTIN_PLUGINS:
            if not pm.is_blocked(module_name) and pm.get_plugin(module_name) is None:
                pm.register(importlib.import_module(module_name), name=module_name)
        _load_entry_points(settings.load_plugins)
        if settings.plugins_dir:
            _load_plugins_dir(Path(settings.plugins_dir))
        check_hooks()
        _loaded = True


def _load_entry_points(names: list[str] | None) -> None:
    """Installed plugins: every one (``names`` None), or those named (ZSTAGGER_LOAD_PLUGINS)."""
    if names is not None:
        installed = {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
        unknown = [name for name in names if name not in installed]
        if unknown:
            raise PluginError(
                f"ZSTAGGER_LOAD_PLUGINS names {', '.join(map(repr, unknown))}, which no installed package provides "
                f"(installed plugins: {', '.join(sorted(installed)) or 'none'})"
            )
    try:
        if names is None:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        for name in names or []:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
    except Exception as exc:
        raise PluginError(f"a plugin from the {ENTRY_POINT_GROUP!r} entry-point group failed to load: {exc!r}") from exc


def _load_plugins_dir(directory: Path) -> None:
    if not directory.is_dir():
        raise PluginError(f"ZSTAGGER_PLUGINS_DIR={directory} is not a directory")
    for path in sorted(directory.glob("*.py")):
        name = f"{directory.name}/{path.name}"
        if pm.is_blocked(path.stem) or pm.get_plugin(name) is not None:
            continue
        spec = importlib.util.spec_from_file_location(f"zstagger_plugins_dir.{path.stem}", path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        try:
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        except Exception as exc:
            raise PluginError(f"plugin file {path} failed to import: {exc!r}") from exc
        pm.register(module, name=name)


def generation() -> int:
    """Changes whenever a plugin is registered or unregistered."""
    return pm.generation


def check_hooks() -> None:
    """Fail loudly on a hook implementation that matches no spec (a misspelled name)."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        known = sorted(name for name in dir(hookspecs) if name.startswith("register_"))
        unknown = re.search(r"unknown hook '([^']+)'", str(exc))
        close = difflib.get_close_matches(unknown.group(1), known, n=1) if unknown else []
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise PluginError(f"{exc}.{hint} Known hooks: {', '.join(known)}") from None


def register(plugin: Any, name: str | None = None) -> str:
    """Register a plugin object at run time (tests, notebooks); returns its name."""
    load_plugins()
    registered = pm.register(plugin, name=name)
    if registered is None:
        raise PluginError(f"plugin {name or plugin!r} is blocked or already registered")
    try:
        check_hooks()
    except PluginError:  # do not leave a half-registered plugin behind
        pm.unregister(plugin)
        raise
    return registered


def unregister(name_or_plugin: Any) -> None:
    if isinstance(name_or_plugin, str):
        pm.unregister(name=name_or_plugin)
    else:
        pm.unregister(name_or_plugin)


def add_commands(cli: Any) -> None:
    """Let every plugin add its commands to the ``cli`` group (``register_commands``).

    A command name that a plugin takes from zstagger or from another plugin is an error
    naming both, as two taxonomies of one name are: click would silently keep the last.
    """
    load_plugins()
    owners = dict.fromkeys(cli.commands, "zstagger")
    for impl in pm.hook.register_commands.get_hookimpls():  # in registration order
        before = dict(cli.commands)
        try:
            impl.function(cli=cli)
        except Exception as exc:
            raise PluginError(f"plugin {impl.plugin_name} failed while adding commands: {exc!r}") from exc
        for name, command in cli.commands.items():
            if before.get(name) is command:
                continue
            if name in owners:
                raise PluginError(
                    f"command {name!r} is added twice: by {owners[name]} and by {impl.plugin_name}; rename one, "
                    "or block a plugin with ZSTAGGER_BLOCK_PLUGINS"
                )
            owners[name] = impl.plugin_name


def plugin_hooks() -> list[dict[str, Any]]:
    """Name and implemented hooks of every registered plugin (for ``zstagger plugins``)."""
    load_plugins()
    out = []
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin)
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        out.append({"name": name, "hooks": hooks, "builtin": name in BUILTIN_PLUGINS})
    return sorted(out, key=lambda p: (not p["builtin"], p["name"]))
