"""Decoding image bytes into RGB pictures, within the policy's limits.

Two steps, so that the caller can reserve memory in between: :func:`open_encoded` reads
the header and refuses what must not be decoded (too many pixels, JPEG scans, or JPEG
scans x pixels), and
:func:`decode_cost` estimates the memory decoding will take; :func:`finish` then decodes
and converts to RGB. Conversions that need temporaries (16-bit and float scaling,
transparency) run in horizontal strips, so the peak is about the decoded source plus the
RGB output.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ImageLoadError
from .jpeg import count_scans
from .policy import DEFAULT_POLICY, ImagePolicy

_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_STRIP_PIXELS = 1 << 20  # temporaries per strip: 8 MB of float64 at most

# Pillow holds a decoded image in blocks of 16 MiB. Once glibc's dynamic mmap threshold has
# grown (up to 32 MiB, after the first large free), blocks that size come from the heap, and
# freed heap memory mostly stays with the process: RSS would not fall after a large image,
# and each loader thread's arena would keep its own peak. Blocks over 32 MiB are always
# mapped, and unmapped when the image is freed. PILLOW_BLOCK_SIZE, when set, still decides.
if "PILLOW_BLOCK_SIZE" not in os.environ:
    Image.core.set_block_size(64 << 20)
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def decode(data: bytes, policy: ImagePolicy = DEFAULT_POLICY, min_size: int | None = None) -> Image.Image:
    """Encoded bytes to an RGB picture (no memory reservation: see :func:`~.load.open_image`)."""
    return finish(open_encoded(data, policy, min_size))


def open_encoded(data: bytes, policy: ImagePolicy, min_size: int | None = None) -> Image.Image:
    """Read the header and check the limits; nothing is decoded yet.

    ``min_size`` lets JPEG decoding work at a reduced DCT scale (``Image.draft``) as long
    as both sides stay at least that large.
    """
    scans = count_scans(data, policy.max_jpeg_scans) if data[:2] == b"\xff\xd8" else 0
    if scans > policy.max_jpeg_scans:
        raise ImageLoadError(
            "too_many_scans",
            f"JPEG has more than {policy.max_jpeg_scans} scans (progressive JPEGs have about 10; each scan is "
            "decoded over the whole image again: a possible decode bomb); raise ZSTAGGER_MAX_JPEG_SCANS if it is genuine",
        )
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageLoadError("invalid_image", "not an image, or a format Pillow cannot read") from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError("too_many_pixels", str(exc)) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # a damaged header
        raise ImageLoadError("invalid_image", f"could not read image header: {exc}") from None
    check_pixels(im, policy)
    check_scan_work(im, scans, policy)
    if min_size and im.format == "JPEG":
        try:
            im.draft("RGB", (min_size, min_size))
        except _DECODE_ERRORS as exc:
            raise ImageLoadError("invalid_image", f"could not decode image: {exc}") from None
    return im


def decode_cost(im: Image.Image, encoded_bytes: int = 0) -> int:
    """Bytes of memory decoding ``im`` (opened, not loaded) to RGB and then to an array takes.

    The decoded source, the RGB picture unless the source is RGB already (Pillow keeps RGB
    in 4 bytes a pixel), the uint8 array a preprocessor makes of it (3 bytes a pixel), and
    the encoded bytes; a rotated picture (EXIF orientation) needs a second RGB copy.
    """
    pixels = im.width * im.height
    cost = encoded_bytes + pixels * (_bytes_per_pixel(im.mode) + 3)
    if im.mode != "RGB":
        cost += pixels * 4
    if "exif" in im.info and im.getexif().get(_ORIENTATION, 1) in _TRANSPOSE:
        cost += pixels * 4
    return cost


def _bytes_per_pixel(mode: str) -> int:
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4  # Pillow stores every other mode (RGB, LA and the 32-bit ones) in 4 bytes a pixel


def finish(im: Image.Image) -> Image.Image:
    """Decode an opened image, convert it to RGB, apply its EXIF orientation."""
    try:
        im.load()
        orientation = im.getexif().get(_ORIENTATION, 1)
        rgb = to_rgb(im)
        if orientation in _TRANSPOSE:  # converted first: transposing the RGB copy is cheaper than the source
            rgb = rgb.transpose(_TRANSPOSE[orientation])
        return rgb
    except _DECODE_ERRORS as exc:
        raise ImageLoadError("invalid_image", f"could not decode image: {exc}") from None


def check_scan_work(im: Image.Image, scans: int, policy: ImagePolicy) -> None:
    """Refuse a JPEG whose scans x pixels exceed the policy: the work of decoding it.

    Every scan is entropy-decoded over all of the image's blocks, at any DCT scale, so a
    hundred scans of a large image cost a hundred full passes even where the bytes are few.
    """
    work = scans * im.width * im.height
    if work > policy.max_jpeg_scan_pixels:
        raise ImageLoadError(
            "too_many_scans",
            f"JPEG has {scans} scans of {im.width}x{im.height} pixels = {work:,} scan-pixels of decoding, over the limit "
            f"of {policy.max_jpeg_scan_pixels:,} (a 12-megapixel progressive photo needs 120 million: a possible decode "
            "bomb); raise ZSTAGGER_MAX_JPEG_SCAN_PIXELS if it is genuine",
        )


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
    float images are scaled into 8 bits instead of being clipped. Both run strip by strip
    into the output, so no full-size temporary is made.
    """
    if im.mode == "RGB":
        im.load()
        return im
    if im.mode.startswith("I") or im.mode == "F":
        scale = _eight_bit_scale(im)
        return _by_strips(im, lambda strip: _to_8bit(strip, scale).convert("RGB"))
    if "A" in im.getbands() or "a" in im.getbands() or im.info.get("transparency") is not None:
        return _by_strips(im, _on_white)
    return im.convert("RGB")


def _by_strips(im: Image.Image, convert) -> Image.Image:
    out = Image.new("RGB", im.size)
    rows = max(1, _STRIP_PIXELS // max(1, im.width))
    for top in range(0, im.height, rows):
        out.paste(convert(im.crop((0, top, im.width, min(im.height, top + rows)))), (0, top))
    return out


def _on_white(strip: Image.Image) -> Image.Image:
    rgba = strip.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _eight_bit_scale(im: Image.Image) -> tuple[str, float] | None:
    """How to bring a 16-bit, 32-bit or float image into 0-255, from its extremes."""
    _, high = im.getextrema()
    if im.mode == "F":
        peak = float(high)
        return ("mul", 255.0) if peak <= 1.0 else ("mul", 255.0 / peak) if peak > 255.0 else None
    peak = float(max(high, 0))
    if im.mode.startswith("I;16") or peak > 255:
        return ("div", 257.0) if peak <= 65535 else ("mul", 255.0 / peak)
    return None


def _to_8bit(strip: Image.Image, scale: tuple[str, float] | None) -> Image.Image:
    arr = np.asarray(strip, dtype=np.float64)
    if scale is not None:
        op, factor = scale
        arr = arr / factor if op == "div" else arr * factor
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
