"""Built-in `ecommerce` taxonomy (its spec: zstagger/builtin/data/ecommerce.yaml)."""

from ..hookspecs import hookimpl
from . import packaged_taxonomy


@hookimpl
def register_taxonomies(register):
    register(packaged_taxonomy("ecommerce.yaml"))
