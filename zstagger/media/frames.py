"""One sampled frame of an animation or video, and the thumbnails that compare frames cheaply.

A :class:`Frame` carries its time (seconds from the start), the RGB picture to embed and a
32x32 colour thumbnail (values 0-1; colour, so that a red shape on a grey background of the
same brightness still differs). :func:`distance` between two thumbnails is their mean
absolute difference: what scene cuts and near-duplicate frames are judged by.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

THUMB = 32


@dataclass
class Frame:
    time: float  # seconds from the media's start
    image: Image.Image  # RGB
    thumb: np.ndarray  # (THUMB, THUMB, 3) float32 in [0, 1]
    index: int = 0  # the decoded frame's number (0-based)


def thumbnail(image: Image.Image) -> np.ndarray:
    """A 32x32 RGB thumbnail of a picture, 0-1."""
    small = image.convert("RGB").resize((THUMB, THUMB), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(small, dtype=np.float32) / 255.0


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails (0: identical, 1: black against white)."""
    return float(np.abs(a - b).mean())
