"""One image reference (path, URL, bytes, PIL image) in, one RGB picture out, or an ImageLoadError.

Callers turn an :class:`~zstagger.errors.ImageLoadError` into an error record for that one
image and carry on with the batch.
"""

from __future__ import annotations

import io
import os

from PIL import Image

from ..errors import ImageLoadError
from .decode import check_pixels, decode, to_rgb
from .fetch import fetch_url
from .inputs import ImageInput, NamedBytes, is_url
from .policy import ImagePolicy


def load_image(ref: ImageInput, policy: ImagePolicy = ImagePolicy(), min_size: int | None = None) -> Image.Image:
    """Read, decode and normalise one image to RGB.

    ``min_size`` lets JPEG decoding work at a reduced DCT scale (``Image.draft``) as long
    as both sides stay at least that large; it is the speed knob the preprocessor uses.
    """
    if isinstance(ref, Image.Image):
        check_pixels(ref, policy)
        return to_rgb(ref)
    if isinstance(ref, NamedBytes):
        ref = ref.data
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return decode(io.BytesIO(ref), policy, min_size)
    if is_url(ref):
        return decode(io.BytesIO(fetch_url(ref, policy)), policy, min_size)
    path = os.fspath(ref)
    try:
        with open(path, "rb") as fp:
            return decode(fp, policy, min_size)
    except FileNotFoundError:
        raise ImageLoadError("not_found", f"no such file: {path}") from None
    except IsADirectoryError:
        raise ImageLoadError("not_found", f"{path} is a directory with no images in it") from None
    except PermissionError:
        raise ImageLoadError("unreadable", f"permission denied: {path}") from None
