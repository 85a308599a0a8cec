"""Image preprocessing that reproduces a checkpoint's own image processor.

CLIP-family processors resize (shortest edge, or to a fixed size), center-crop, rescale to
[0, 1] and normalize. The geometric part is done here per image with Pillow, exactly as
transformers' Pillow backend does it (same size arithmetic, same filter, same crop
offsets), producing uint8 pixels; the arithmetic part runs once per batch as a tensor op in
:meth:`~zstagger.engine.model.ClipEncoder.encode_images`. Processors with options this
cannot reproduce fall back to calling the Hugging Face processor itself.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

# Pillow hands numpy a read-only buffer; torch only reads it here, and copying it to
# silence torch's warning would cost more than the resize it feeds.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", module=__name__)


class UnsupportedProcessor(ValueError):
    """The image processor uses options the fast path does not reproduce."""


@dataclass(frozen=True)
class Preprocessor:
    """Geometry (resize + crop) plus the normalisation constants of one checkpoint."""

    shortest_edge: int | None  # resize so the short side has this length, keep aspect
    resize_to: tuple[int, int] | None  # or resize to exactly (height, width)
    crop: tuple[int, int] | None  # center crop (height, width) after resizing
    resample: int
    rescale_factor: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_hf(cls, processor) -> Preprocessor:
        """Read the settings of a transformers image processor (CLIP, SigLIP, ALIGN, ...)."""
        get = lambda name, default=None: getattr(processor, name, default)  # noqa: E731
        for flag in ("do_pad", "do_image_splitting", "do_reduce_labels"):
            if get(flag):
                raise UnsupportedProcessor(f"{flag}=True")
        size = _as_dict(get("size"))
        shortest = resize_to = crop = None
        if not get("do_resize", True):
            raise UnsupportedProcessor("do_resize=False")
        if size.get("shortest_edge") and not size.get("longest_edge"):
            shortest = int(size["shortest_edge"])
        elif size.get("height") and size.get("width"):
            resize_to = (int(size["height"]), int(size["width"]))
        else:
            raise UnsupportedProcessor(f"size={size}")
        if get("do_center_crop", False):
            crop_size = _as_dict(get("crop_size"))
            crop = (int(crop_size["height"]), int(crop_size["width"]))
            bound = shortest if shortest else min(resize_to)  # type: ignore[arg-type]
            if max(crop) > bound:
                raise UnsupportedProcessor("crop larger than the resized image (would need padding)")
        elif shortest is not None:
            raise UnsupportedProcessor("shortest_edge resize without center crop gives unequal sizes")
        rescale = float(get("rescale_factor", 1 / 255)) if get("do_rescale", True) else 1.0
        if get("do_normalize", True):
            mean, std = _triple(get("image_mean")), _triple(get("image_std"))
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        resample = get("resample", Image.BICUBIC)
        resample = int(getattr(resample, "value", resample))
        return cls(shortest, resize_to, crop, resample, rescale, mean, std)

    @property
    def output_size(self) -> tuple[int, int]:
        return self.crop or self.resize_to  # type: ignore[return-value]

    @property
    def min_decode_size(self) -> int:
        """Smallest side length decoding must keep for this geometry to be reproduced."""
        return self.shortest_edge or max(self.resize_to)  # type: ignore[arg-type]

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step, with transformers' arithmetic."""
        if self.resize_to is not None:
            return self.resize_to[1], self.resize_to[0]
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)  # type: ignore[operator]
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def __call__(self, image: Image.Image, exact: bool = True) -> np.ndarray:
        """RGB PIL image -> uint8 array (height, width, 3) of :attr:`output_size`.

        ``exact``: resize with Pillow, as transformers does (bit-identical pixels).
        Otherwise downscaling uses torch's antialiased uint8 bicubic kernel, which is
        about 7x faster and differs from Pillow's by at most one level on rare pixels.
        """
        width, height = image.size
        new_w, new_h = self.resized_size(width, height)
        if (new_w, new_h) == (width, height):
            pixels = np.asarray(image, dtype=np.uint8)
        elif exact or self.resample != Image.BICUBIC or new_w > width or new_h > height or image.mode != "RGB":
            pixels = np.asarray(image.resize((new_w, new_h), resample=self.resample), dtype=np.uint8)
        else:
            pixels = _downscale_bicubic(_rgb_array(image), new_h, new_w)
        if self.crop is not None:
            crop_h, crop_w = self.crop
            top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
            pixels = pixels[top : top + crop_h, left : left + crop_w]
        return pixels

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale, shift) per channel so that ``pixels * scale + shift`` is the model input."""
        std = np.asarray(self.std, dtype=np.float64)
        scale = self.rescale_factor / std
        shift = -np.asarray(self.mean, dtype=np.float64) / std
        return scale.astype(np.float32), shift.astype(np.float32)


def _rgb_array(image: Image.Image, strip_pixels: int = 1 << 20) -> np.ndarray:
    """The pixels of an RGB image as uint8 (height, width, 3), with one full-size copy.

    ``np.asarray(image)`` goes through ``tobytes()``, which holds the encoded chunks and
    their join at once: two full-size copies, 360 MB for a 64 MP picture. Large pictures
    are copied strip by strip into one array instead.
    """
    width, height = image.size
    if width * height <= strip_pixels:
        return np.asarray(image, dtype=np.uint8)
    out = np.empty((height, width, 3), dtype=np.uint8)
    rows = max(1, strip_pixels // width)
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        out[top:bottom] = np.asarray(image.crop((0, top, width, bottom)), dtype=np.uint8)
    return out


def _downscale_bicubic(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased bicubic (Pillow's a=-0.5 kernel) on uint8 HWC, via torch's vectorised path."""
    import torch

    x = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)  # a channels-last view: no copy
    y = torch.nn.functional.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).numpy()


def _as_dict(value) -> dict:
    if value is None:
        return {}
    if isinstance(value, int):
        return {"shortest_edge": value}
    if isinstance(value, dict):
        return value
    return {k: getattr(value, k) for k in ("shortest_edge", "longest_edge", "height", "width") if getattr(value, k, None)}


def _triple(value) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        return (float(value),) * 3  # type: ignore[return-value]
    values = tuple(float(v) for v in value)
    if len(values) != 3:
        raise UnsupportedProcessor(f"expected 3 channel values, got {values}")
    return values  # type: ignore[return-value]
