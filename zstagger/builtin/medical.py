"""Built-in `medical` taxonomy (its spec: zstagger/builtin/data/medical.yaml)."""

from ..hookspecs import hookimpl
from . import packaged_taxonomy


@hookimpl
def register_taxonomies(register):
    register(packaged_taxonomy("medical.yaml"))
