"""Image sources by URL scheme: where images come from, registered like plugins.

- :mod:`.base`: what a source is (:class:`ImageSource`: open one reference, list a prefix)
  and what it is handed (:class:`ReadRequest`, :class:`ObjectInfo`);
- :mod:`.access`: which references may be read at all: credentials in a URL are refused,
  object stores obey the allow-list (``ZSTAGGER_SOURCE_ALLOW``);
- :mod:`.registry`: scheme -> source, from every plugin's ``register_image_sources``;
- :mod:`.read`: the one entry point for bytes (:func:`read_bytes`), the object's version
  (:func:`object_version`) and listings (:func:`list_prefix`); it owns the time budget and
  the size cap of every source (a plugin's source is bounded the same way as the built-ins);
- :mod:`.builtin` (local files, http(s), data:) and :mod:`.objectstore` (s3://, gs://,
  az:// through fsspec): the built-in sources, plugins like any other.

Local files are read by :func:`zstagger.files.read_regular_file` and URLs fetched by
:mod:`zstagger.net` through :mod:`zstagger.images`: the sources hand those owners the
reference, they do not read it again their own way. Imports nothing above the plugins'
registry: no embedder, no tagger, no queue.
"""

from .access import check_reference, is_source_url
from .base import ImageSource, ObjectInfo, ObjectRef, ReadRequest
from .read import expand_prefixes, is_prefix, list_prefix, listing_order, object_version, read_bytes
from .registry import is_listable, registered_sources, source_for

__all__ = [
    "ImageSource", "ObjectInfo", "ObjectRef", "ReadRequest", "check_reference", "expand_prefixes", "is_listable", "is_prefix",
    "is_source_url", "list_prefix", "listing_order",
    "object_version", "read_bytes", "registered_sources", "source_for",
]
