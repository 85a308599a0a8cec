"""Synthetic images for benchmarks, examples and tests: deterministic, generated, no files needed."""

from __future__ import annotations

import numpy as np
from PIL import Image


def sample_image(seed: int = 0, size: tuple[int, int] = (96, 72), mode: str = "RGB") -> Image.Image:
    """A deterministic noisy gradient image (different seeds give different images)."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * (seed + 3)) % 256, (y * (seed + 5)) % 256, ((x + y) * (seed + 7)) % 256], -1).astype(np.float32)
    base += rng.normal(0, 25, base.shape)
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8), "RGB")
    return image if mode == "RGB" else image.convert(mode)
