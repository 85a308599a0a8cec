"""One image reference (path, URL, bytes, PIL image) in, one RGB picture out, or an ImageLoadError.

Two steps, usable apart: :func:`read_image_bytes` (the encoded bytes of a path, URL or
bytes input; an image-embedding cache hashes them and may skip the second step) and
:func:`load_image` (bytes or a reference decoded to RGB).

Callers turn an :class:`~zstagger.errors.ImageLoadError` into an error record for that one
image and carry on with the batch.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from typing import BinaryIO

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
    if isinstance(ref, (NamedBytes, bytes, bytearray, memoryview)) or is_url(ref):
        return decode(io.BytesIO(read_image_bytes(ref, policy)), policy, min_size)
    with _open_file(os.fspath(ref)) as fp:
        return decode(fp, policy, min_size)


def read_image_bytes(ref: ImageInput, policy: ImagePolicy = ImagePolicy()) -> bytes:
    """The encoded bytes of a path, URL or bytes input, without decoding them.

    Local files are read whole, up to the policy's ``max_bytes`` (like downloads).
    PIL images have no encoded form: callers handle them before calling this.
    """
    if isinstance(ref, NamedBytes):
        ref = ref.data
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return bytes(ref)
    if isinstance(ref, Image.Image):
        raise TypeError("a PIL image has no encoded bytes")
    if is_url(ref):
        return fetch_url(ref, policy)
    path = os.fspath(ref)
    with _open_file(path) as fp:
        data = fp.read(policy.max_bytes + 1)
    if len(data) > policy.max_bytes:
        raise ImageLoadError(
            "too_large", f"{path} is over the {policy.max_bytes:,}-byte limit (ZSTAGGER_MAX_IMAGE_BYTES)"
        )
    return data


@contextlib.contextmanager
def _open_file(path: str) -> Iterator[BinaryIO]:
    """``open(path, "rb")`` with the OS's errors turned into error records."""
    try:
        with open(path, "rb") as fp:
            yield fp
    except FileNotFoundError:
        raise ImageLoadError("not_found", f"no such file: {path}") from None
    except IsADirectoryError:
        raise ImageLoadError("not_found", f"{path} is a directory with no images in it") from None
    except PermissionError:
        raise ImageLoadError("unreadable", f"permission denied: {path}") from None
