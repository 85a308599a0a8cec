"""Reading images from files, directories, URLs and bytes, safely.

- :mod:`.inputs`: what an input can be, how it is named in results, directory expansion;
- :mod:`.policy`: the limits every read obeys (:class:`ImagePolicy`);
- :mod:`.decode`: bytes to an RGB picture, within those limits;
- :mod:`.fetch`: the hardened URL fetcher (deadline, size cap, address policy);
- :mod:`.load`: one reference in, its bytes or one picture (or an :class:`~zstagger.errors.ImageLoadError`) out.

Nothing here imports the engine, the tagger or anything above them.
"""

from .decode import decode, to_rgb
from .fetch import fetch_url
from .inputs import IMAGE_EXTENSIONS, ImageInput, NamedBytes, describe, expand_inputs, is_url, iter_inputs
from .load import load_image, read_image_bytes
from .policy import ImagePolicy

__all__ = [
    "IMAGE_EXTENSIONS", "ImageInput", "ImagePolicy", "NamedBytes", "decode", "describe", "expand_inputs",
    "fetch_url", "is_url", "iter_inputs", "load_image", "read_image_bytes", "to_rgb",
]
