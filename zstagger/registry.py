"""The taxonomy registry: what every plugin registers, by name, computed once and cached.

Lookups (``get_taxonomy``, ``resolve_taxonomy``) run on every command, every HTTP request
and every enqueue, so the registry is built once and kept until a plugin is registered or
unregistered, or a file in ``ZSTAGGER_TAXONOMY_PATH`` appears, changes or goes.

A broken taxonomy file stays with itself: it is left out of the registry (one warning line
per process names the file and its problem), listed by :func:`invalid_taxonomies`, and
asking for it by name is an :class:`InvalidTaxonomyError`; every other taxonomy works.
"""

from __future__ import annotations

import difflib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from . import plugins
from .builtin.taxonomy_files import BrokenTaxonomyFile, files_signature
from .errors import ConfigurationError, PluginError, TaxonomyError, UnknownTaxonomyError
from .settings import Settings
from .taxonomy import DEFAULT_TEMPLATE, Taxonomy


log = logging.getLogger(__name__)


class DuplicateTaxonomyError(TaxonomyError):
    """Two plugins registered taxonomies with the same name."""

    type = "duplicate_taxonomy"


class InvalidTaxonomyError(TaxonomyError):
    """The taxonomy asked for comes from a file that cannot be used (broken); the message names it."""

    type = "broken_taxonomy"


@dataclass(frozen=True)
class InvalidTaxonomy:
    """A taxonomy that was registered but cannot be used: where it came from and why."""

    name: str
    plugin: str
    source: str
    error: str

    @property
    def origin(self) -> str:
        return f"{self.plugin} ({self.source})"


@dataclass(frozen=True)
class RegisteredTaxonomy:
    taxonomy: Taxonomy
    plugin: str
    source: str | None = None

    @property
    def origin(self) -> str:
        return f"{self.plugin} ({self.source})" if self.source else self.plugin


_lock = threading.Lock()
_cache: tuple[object, dict[str, RegisteredTaxonomy], list[InvalidTaxonomy]] | None = None
_warned: set[tuple[str, str]] = set()  # (source, error) of the broken files already reported by this process


def registered_taxonomies() -> dict[str, RegisteredTaxonomy]:
    """Every usable taxonomy every plugin registers, by name. Duplicates are an error naming both."""
    return dict(_registry()[0])


def invalid_taxonomies() -> list[InvalidTaxonomy]:
    """Registered taxonomies that cannot be used (broken taxonomy files), with their errors."""
    return list(_registry()[1])


def _registry() -> tuple[dict[str, RegisteredTaxonomy], list[InvalidTaxonomy]]:
    global _cache
    plugins.load_plugins()
    key = (plugins.generation(), files_signature(Settings().taxonomy_dirs))
    with _lock:
        if _cache is None or _cache[0] != key:
            _cache = (key, *_collect())
            for broken in _cache[2]:
                if (broken.source, broken.error) not in _warned:
                    _warned.add((broken.source, broken.error))
                    log.warning("zstagger: taxonomy %r is left out: %s; the other taxonomies work (fix the file, or "
                                "move it out of ZSTAGGER_TAXONOMY_PATH)", broken.name, broken.error.replace("\n", "; "))
        return _cache[1], _cache[2]


def invalidate() -> None:
    """Forget the cached registry (the next lookup asks every plugin again)."""
    global _cache
    with _lock:
        _cache = None


def _collect() -> tuple[dict[str, RegisteredTaxonomy], list[InvalidTaxonomy]]:
    found: dict[str, RegisteredTaxonomy] = {}
    invalid: list[InvalidTaxonomy] = []
    for impl in plugins.pm.hook.register_taxonomies.get_hookimpls():  # in registration order

        def add(taxonomy: Taxonomy | dict | BrokenTaxonomyFile, source: str | None = None,
                _plugin: str = impl.plugin_name) -> None:
            if isinstance(taxonomy, BrokenTaxonomyFile):
                invalid.append(InvalidTaxonomy(taxonomy.name, _plugin, taxonomy.source, taxonomy.error))
                return
            if isinstance(taxonomy, dict):
                taxonomy = Taxonomy.parse(taxonomy, source=source)
            if not isinstance(taxonomy, Taxonomy):
                raise TaxonomyError(f"plugin {_plugin} registered {type(taxonomy).__name__}, not a zstagger.Taxonomy")
            entry = RegisteredTaxonomy(taxonomy, _plugin, source)
            if taxonomy.name in found:
                raise DuplicateTaxonomyError(
                    f"taxonomy {taxonomy.name!r} is registered twice: by {found[taxonomy.name].origin} and by "
                    f"{entry.origin}; rename one, or block a plugin with ZSTAGGER_BLOCK_PLUGINS"
                )
            found[taxonomy.name] = entry

        try:
            impl.function(register=add)
        except DuplicateTaxonomyError:
            raise
        except TaxonomyError as exc:
            raise TaxonomyError(f"plugin {impl.plugin_name}: {exc}") from None
        except Exception as exc:
            raise PluginError(f"plugin {impl.plugin_name} failed while registering taxonomies: {exc!r}") from exc
    return found, invalid


def resolve_taxonomy(
    taxonomy: str | Taxonomy | None = None, labels: Sequence[str] | str | None = None, template: str | None = None
) -> Taxonomy:
    """The taxonomy to tag with: a registered name, a Taxonomy, or ad-hoc labels (+ template).

    The one owner of "exactly one of taxonomy or labels": the CLI, the Python API, the
    queue producer and the HTTP service all call it.
    """
    if (taxonomy is None) == (labels is None):
        raise ConfigurationError("give exactly one of taxonomy=NAME or labels=[...]")
    if labels is not None:
        if isinstance(labels, str):
            labels = labels.split(",")
        if not any(label.strip() for label in labels):
            raise ConfigurationError("labels=[...] needs at least one non-empty label")
        return Taxonomy.from_labels(labels, template or DEFAULT_TEMPLATE)
    if template is not None:
        raise ConfigurationError("template= only applies to ad-hoc labels; a taxonomy brings its own templates")
    return taxonomy if isinstance(taxonomy, Taxonomy) else get_taxonomy(taxonomy)  # type: ignore[arg-type]


def resolve_each(taxonomies: Sequence[str | Taxonomy]) -> list[Taxonomy]:
    """The taxonomies of a several-taxonomy pass (``taxonomies=[...]``, repeated ``-t``): at least
    one, each a registered name or a Taxonomy, names all different (each result is kept under
    its taxonomy's name). The one owner of that rule: the Python API, the CLI, the queue
    producer and the HTTP service all call it."""
    if isinstance(taxonomies, (str, Taxonomy)) or not taxonomies:
        raise ConfigurationError("taxonomies must be a list of one or more taxonomy names or specs")
    specs = [resolve_taxonomy(t, None, None) for t in taxonomies]
    names = [spec.name for spec in specs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigurationError(f"taxonomy {twice[0]!r} is given twice: each taxonomy's result is kept under its name")
    return specs


def get_taxonomy(name: str) -> Taxonomy:
    taxonomies, invalid = _registry()
    if name in taxonomies:
        return taxonomies[name].taxonomy
    for broken in invalid:
        if broken.name == name:
            raise InvalidTaxonomyError(f"taxonomy {name!r} cannot be used: {broken.error}")
    close = difflib.get_close_matches(name, taxonomies, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    available = ", ".join(sorted(taxonomies)) or "none"
    raise UnknownTaxonomyError(
        f"unknown taxonomy {name!r}.{hint} Available: {available}. "
        "Run `zstagger taxonomies` to list them, or install/register a plugin that provides it."
    )
