"""Taxonomies as data: every YAML/JSON file in the ``ZSTAGGER_TAXONOMY_PATH`` directories.

A file is parsed once per process and again only when it changes (path, size, mtime).
A file that cannot be used (unreadable, not YAML/JSON, an invalid spec) is registered as a
:class:`BrokenTaxonomyFile`: the registry keeps it apart, so the other taxonomies work and
only asking for this one is an error.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import FileReadError, TaxonomyError
from ..files import read_regular_file
from ..hookspecs import hookimpl
from ..settings import Settings
from ..taxonomy import MAX_FILE_BYTES, Taxonomy

SUFFIXES = (".yaml", ".yml", ".json")

# A top-level "name: x" line (YAML, at the margin) or the first "name": "x" pair (JSON).
_NAME = re.compile(
    r"^name\s*:\s*[\"']?([A-Za-z0-9][A-Za-z0-9_.\-]*)[\"']?\s*(?:#.*)?$"
    r"|\"name\"\s*:\s*\"([A-Za-z0-9][A-Za-z0-9_.\-]*)\"",
    re.M,
)


@dataclass(frozen=True)
class BrokenTaxonomyFile:
    """A taxonomy file that could not be used, under the name it gives (else its file name)."""

    name: str
    source: str
    error: str


_parsed: dict[tuple, Taxonomy | BrokenTaxonomyFile] = {}
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


def load(path: Path) -> Taxonomy | BrokenTaxonomyFile:
    stamp = _stamp(path)
    with _lock:
        cached = _parsed.get(stamp)
    if cached is None:
        try:
            cached = Taxonomy.from_file(path)
        except TaxonomyError as exc:
            cached = BrokenTaxonomyFile(_declared_name(path), str(path), str(exc))
        with _lock:
            _parsed[stamp] = cached
    return cached


def _declared_name(path: Path) -> str:
    """The ``name`` a broken file declares, as far as a line of it says (else the file's stem).
    Read as any taxonomy file is: a FIFO or device is never opened for reading."""
    try:
        text = read_regular_file(path, MAX_FILE_BYTES).decode("utf-8", "replace")
    except FileReadError:
        text = ""
    found = _NAME.search(text)
    return (found.group(1) or found.group(2)) if found else path.stem


@hookimpl
def register_taxonomies(register):
    for path in taxonomy_files(Settings().taxonomy_dirs):
        loaded = load(path)
        register(loaded, source=str(path))
