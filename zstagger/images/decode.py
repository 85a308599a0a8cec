"""Decoding image bytes into RGB pictures, within the policy's limits."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageLoadError
from .policy import ImagePolicy

_ORIENTATION = 0x0112


def decode(fp, policy: ImagePolicy = ImagePolicy(), min_size: int | None = None) -> Image.Image:
    try:
        im = Image.open(fp)
    except UnidentifiedImageError:
        raise ImageLoadError("invalid_image", "not an image, or a format Pillow cannot read") from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError("too_many_pixels", str(exc)) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # a damaged header
        raise ImageLoadError("invalid_image", f"could not read image header: {exc}") from None
    check_pixels(im, policy)
    try:
        if min_size and im.format == "JPEG":
            im.draft("RGB", (min_size, min_size))
        if im.getexif().get(_ORIENTATION, 1) != 1:  # exif_transpose copies the image even when upright
            im = ImageOps.exif_transpose(im)
        return to_rgb(im)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageLoadError("invalid_image", f"could not decode image: {exc}") from None


def check_pixels(im: Image.Image, policy: ImagePolicy) -> None:
    width, height = im.size
    if width * height > policy.max_pixels:
        raise ImageLoadError(
            "too_many_pixels",
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of {policy.max_pixels:,} "
            "(a possible decompression bomb); raise ZSTAGGER_MAX_IMAGE_PIXELS if it is genuine",
        )
    if width == 0 or height == 0:
        raise ImageLoadError("invalid_image", f"image has no pixels ({width}x{height})")


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB.

    Transparency is composited onto white, as transformers' ``convert_to_rgb`` does, so
    a transparent PNG scores the same here as in the Hugging Face pipeline. 16-bit and
    float images are scaled into 8 bits instead of being clipped.
    """
    if im.mode == "RGB":
        im.load()
        return im
    if im.mode.startswith("I") or im.mode == "F":
        im = _to_8bit(im)
    if "A" in im.getbands() or "a" in im.getbands() or im.info.get("transparency") is not None:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _to_8bit(im: Image.Image) -> Image.Image:
    arr = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        peak = float(arr.max()) if arr.size else 0.0
        arr = arr * 255.0 if peak <= 1.0 else arr * (255.0 / peak) if peak > 255.0 else arr
    elif im.mode.startswith("I;16") or float(arr.max(initial=0)) > 255:
        peak = float(arr.max(initial=0))
        arr = arr / 257.0 if peak <= 65535 else arr * (255.0 / peak)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
