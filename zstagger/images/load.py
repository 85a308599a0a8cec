"""One image reference (path, URL, bytes, PIL image) in, one RGB picture out, or an ImageLoadError.

Callers turn an :class:`~zstagger.errors.ImageLoadError` into an error record for that one
image and carry on with the batch. Every source becomes capped bytes first (a local path is
read by :func:`~zstagger.files.read_regular_file`, so a FIFO or device is refused, never
waited on), then decoding takes its share of the process's decode budget.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image

from ..errors import FetchError, FileReadError, ImageLoadError
from ..files import read_regular_file
from ..net.fetch import http_get
from .budget import budget_for
from .decode import check_pixels, decode_cost, finish, open_encoded, to_rgb
from .inputs import ImageInput, NamedBytes, is_url
from .policy import DEFAULT_POLICY, ImagePolicy


def load_image(ref: ImageInput, policy: ImagePolicy = DEFAULT_POLICY, min_size: int | None = None) -> Image.Image:
    """Read, decode and normalise one image to RGB.

    ``min_size`` lets JPEG decoding work at a reduced DCT scale (``Image.draft``) as long
    as both sides stay at least that large; it is the speed knob the preprocessor uses.
    """
    with open_image(ref, policy, min_size) as picture:
        return picture


@contextmanager
def open_image(ref: ImageInput, policy: ImagePolicy = DEFAULT_POLICY, min_size: int | None = None) -> Iterator[Image.Image]:
    """:func:`load_image` as a context: the picture's memory stays reserved in the process's
    decode budget (``ZSTAGGER_MAX_DECODE_BYTES``) until the block ends, so turn it into what
    you keep (model input) inside the block."""
    if isinstance(ref, Image.Image):
        check_pixels(ref, policy)
        yield to_rgb(ref)
        return
    data = read_image_bytes(ref, policy)
    opened = open_encoded(data, policy, min_size)
    with budget_for(policy.max_decode_bytes).hold(decode_cost(opened, len(data))):
        picture = finish(opened)
        del data, opened  # the source is not needed once converted: free it before the caller works
        yield picture


def fetch_url(url: str, policy: ImagePolicy = DEFAULT_POLICY) -> bytes:
    """An image URL's bytes through the hardened HTTP client (:mod:`zstagger.net`: one deadline,
    the size cap, SSRF protection); its failures become :class:`~zstagger.errors.ImageLoadError`
    of the same kind (``url_blocked``, ``fetch_timeout``, ``too_large``, ...)."""
    try:
        return http_get(url, policy.fetch, accept="image/*,*/*;q=0.5")
    except FetchError as exc:
        raise ImageLoadError(exc.kind, exc.message, transient=exc.transient) from None


def read_image_bytes(ref: ImageInput, policy: ImagePolicy = DEFAULT_POLICY) -> bytes:
    """The encoded bytes of a reference, at most ``policy.max_bytes`` of them."""
    if isinstance(ref, NamedBytes):
        ref = ref.data
    if isinstance(ref, (bytes, bytearray, memoryview)):
        if len(ref) > policy.max_bytes:
            raise ImageLoadError(
                "too_large", f"image is {len(ref):,} bytes, over the {policy.max_bytes:,}-byte limit (ZSTAGGER_MAX_IMAGE_BYTES)"
            )
        return bytes(ref)
    if is_url(ref):
        return fetch_url(ref, policy)  # type: ignore[arg-type]
    try:
        return read_regular_file(os.fspath(ref), policy.max_bytes, "ZSTAGGER_MAX_IMAGE_BYTES")  # type: ignore[arg-type]
    except FileReadError as exc:
        raise ImageLoadError(exc.kind, exc.message) from None
