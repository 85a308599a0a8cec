"""Taxonomies as data: every YAML/JSON file in the ``ZSTAGGER_TAXONOMY_PATH`` directories."""

from pathlib import Path

from ..errors import TaxonomyError
from ..hookspecs import hookimpl
from ..settings import Settings
from ..taxonomy import Taxonomy

SUFFIXES = (".yaml", ".yml", ".json")


def taxonomy_files(directories: list[str]) -> list[Path]:
    found = []
    for directory in directories:
        root = Path(directory).expanduser()
        if not root.is_dir():
            raise TaxonomyError(f"ZSTAGGER_TAXONOMY_PATH entry {directory} is not a directory")
        found.extend(sorted(p for p in root.iterdir() if p.suffix.lower() in SUFFIXES and not p.name.startswith(".")))
    return found


@hookimpl
def register_taxonomies(register):
    for path in taxonomy_files(Settings().taxonomy_dirs):
        register(Taxonomy.from_file(path), source=str(path))
