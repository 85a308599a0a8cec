"""Built-in `moderation` taxonomy (its spec: zstagger/builtin/data/moderation.yaml)."""

from ..hookspecs import hookimpl
from . import packaged_taxonomy


@hookimpl
def register_taxonomies(register):
    register(packaged_taxonomy("moderation.yaml"))
