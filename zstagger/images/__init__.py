"""Reading images from files, directories, URLs and bytes, safely.

- :mod:`.inputs`: what an input can be, how it is named in results, directory expansion;
- :mod:`.policy`: the limits every read obeys (:class:`ImagePolicy`);
- :mod:`.decode`: bytes to an RGB picture, within those limits (:mod:`.jpeg` counts a JPEG's scans first);
- :mod:`.budget`: the process-wide memory budget for images being decoded at once;
- :mod:`.load`: one reference in, its bytes (:func:`read_image_bytes`, what an embedding cache
  hashes) or one picture (or an :class:`~zstagger.errors.ImageLoadError`) out; URLs are
  fetched by :mod:`zstagger.net` (the hardened HTTP client), whose
  :class:`~zstagger.errors.FetchError` becomes an ImageLoadError of the same kind.

Local files are read through :func:`zstagger.files.read_regular_file` (regular files only).

Nothing here imports the engine, the tagger or anything above them.
"""

from .decode import decode, to_rgb
from .inputs import (
    IMAGE_EXTENSIONS, ITEM_LIST_SUFFIXES, MAX_ITEM_LINE_BYTES, VIDEO_EXTENSIONS, ImageInput, ImageWithText, NamedBytes,
    check_text, describe, expand_inputs, is_url, item_from_json, iter_inputs, split_text,
)
from .load import fetch_url, load_image, open_image, read_image_bytes
from .policy import ImagePolicy

__all__ = [
    "IMAGE_EXTENSIONS", "ImageInput", "ImagePolicy", "ImageWithText", "NamedBytes", "check_text", "split_text", "item_from_json", "ITEM_LIST_SUFFIXES", "MAX_ITEM_LINE_BYTES", "decode", "describe", "expand_inputs",
    "fetch_url", "is_url", "iter_inputs", "load_image", "open_image", "read_image_bytes", "to_rgb", "VIDEO_EXTENSIONS",
]
