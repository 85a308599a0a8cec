"""Taxonomies as data: every YAML/JSON file in the ``ZSTAGGER_TAXONOMY_PATH`` directories.

A file is parsed once per process and again only when it changes (path, size, mtime).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ..errors import TaxonomyError
from ..hookspecs import hookimpl
from ..settings import Settings
from ..taxonomy import Taxonomy

SUFFIXES = (".yaml", ".yml", ".json")

_parsed: dict[tuple, Taxonomy] = {}
_lock = threading.Lock()


def taxonomy_files(directories: list[str]) -> list[Path]:
    found = []
    for directory in directories:
        root = Path(directory).expanduser()
        if not root.is_dir():
            raise TaxonomyError(f"ZSTAGGER_TAXONOMY_PATH entry {directory} is not a directory")
        found.extend(sorted(p for p in root.iterdir() if p.suffix.lower() in SUFFIXES and not p.name.startswith(".")))
    return found


def _stamp(path: Path) -> tuple:
    try:
        st = os.stat(path)
    except OSError:
        return (str(path), None)
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ino)


def files_signature(directories: list[str]) -> tuple:
    """Changes when a taxonomy file in these directories appears, changes or goes (stat only)."""
    try:
        return (tuple(directories), tuple(_stamp(p) for p in taxonomy_files(directories)))
    except TaxonomyError:
        return (tuple(directories), None)  # reported when the registry is built


def load(path: Path) -> Taxonomy:
    stamp = _stamp(path)
    with _lock:
        cached = _parsed.get(stamp)
    if cached is None:
        cached = Taxonomy.from_file(path)
        with _lock:
            _parsed[stamp] = cached
    return cached


@hookimpl
def register_taxonomies(register):
    for path in taxonomy_files(Settings().taxonomy_dirs):
        register(load(path), source=str(path))
