"""Built-in plugins. Each is registered exactly like a third-party plugin."""

from functools import cache
from importlib.resources import files

from ..taxonomy import Taxonomy


@cache
def packaged_taxonomy(filename: str) -> Taxonomy:
    """A taxonomy shipped as YAML inside this package (parsed once per process)."""
    return Taxonomy.from_file(files(__package__).joinpath("data", filename))  # type: ignore[arg-type]
