"""Synthetic images for benchmarks, examples and tests: deterministic, generated, no files needed.

- :func:`sample_image`: a noisy gradient (different seeds, different images);
- :func:`labelled_image`, :func:`write_labelled_folders`, :func:`write_labelled_manifest`:
  labelled image sets whose classes differ in colour, texture and shape. Image features
  of a model with random weights separate such classes (its text features do not, so
  zero-shot accuracy on random checkpoints stays near chance: use these sets to check
  that metrics, calibration and few-shot code run and compute right, and to measure
  gains from image examples).
"""

from __future__ import annotations

import colorsys
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

_SHAPES = ("ellipse", "rectangle", "triangle")
_TEXTURES = ("stripes", "checks", "dots")


def sample_image(seed: int = 0, size: tuple[int, int] = (96, 72), mode: str = "RGB") -> Image.Image:
    """A deterministic noisy gradient image (different seeds give different images)."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * (seed + 3)) % 256, (y * (seed + 5)) % 256, ((x + y) * (seed + 7)) % 256], -1).astype(np.float32)
    base += rng.normal(0, 25, base.shape)
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8), "RGB")
    return image if mode == "RGB" else image.convert(mode)


def _style(index: int) -> tuple[np.ndarray, str, str, float]:
    """Class ``index``'s colour (RGB 0-255), texture, shape and texture angle: all differ between neighbours."""
    hue = (index * 0.618033988749895) % 1.0  # golden-ratio steps: well-spread hues for any count
    colour = np.array(colorsys.hsv_to_rgb(hue, 0.85, 0.95)) * 255
    return colour, _TEXTURES[index % 3], _SHAPES[(index // 3 + index) % 3], (index * 37.0) % 180


def _texture(kind: str, angle: float, w: int, h: int, period: float) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = math.radians(angle)
    u, v = x * math.cos(theta) + y * math.sin(theta), -x * math.sin(theta) + y * math.cos(theta)
    if kind == "stripes":
        return (np.sin(2 * math.pi * u / period) > 0).astype(np.float32)
    if kind == "checks":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    du, dv = (u % period) - period / 2, (v % period) - period / 2
    return (du * du + dv * dv < (period * 0.3) ** 2).astype(np.float32)


def labelled_image(classes: Sequence[int], seed: int, size: tuple[int, int] = (256, 192)) -> Image.Image:
    """An image showing each class in ``classes`` as a textured, coloured shape on clutter.

    No classes: clutter only (a negative for every label). One class: a large shape;
    several: smaller shapes side by side.
    """
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    grey = 110 + 40 * np.sin(x / w * rng.uniform(1, 4) + rng.uniform(0, 6)) * np.cos(y / h * rng.uniform(1, 4))
    canvas = np.repeat(grey[..., None], 3, axis=2) + rng.normal(0, 12, (h, w, 3))
    count = max(1, len(classes))
    for slot, index in enumerate(classes):
        colour, texture, shape, angle = _style(index)
        pattern = _texture(texture, angle + rng.uniform(-10, 10), w, h, period=max(6.0, min(w, h) / rng.uniform(10, 16)))
        fill = colour[None, None, :] * (0.55 + 0.45 * pattern[..., None])
        mask_image = Image.new("L", (w, h), 0)
        side = min(w / count, h) * rng.uniform(0.7, 0.9)
        cx = (slot + 0.5) * w / count + rng.uniform(-0.05, 0.05) * w / count
        cy = h / 2 + rng.uniform(-0.08, 0.08) * h
        box = [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]
        draw = ImageDraw.Draw(mask_image)
        if shape == "ellipse":
            draw.ellipse(box, fill=255)
        elif shape == "rectangle":
            draw.rectangle(box, fill=255)
        else:
            draw.polygon([(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=255)
        mask = np.asarray(mask_image, dtype=np.float32)[..., None] / 255.0
        canvas = canvas * (1 - mask) + fill * mask
    canvas += rng.normal(0, 6, canvas.shape)
    return Image.fromarray(canvas.clip(0, 255).astype(np.uint8), "RGB")


def write_labelled_folders(
    root: str | Path, labels: Sequence[str], per_label: int, *, none: int = 0,
    size: tuple[int, int] = (256, 192), seed: int = 0, quality: int = 90,
) -> Path:
    """A folder-per-label dataset: ``root/<label>/NNNN.jpg`` (``/`` in a label name nests
    folders), plus ``root/_none/`` with ``none`` images of no class."""
    root = Path(root)
    for index, label in enumerate([*labels, None]):
        count = per_label if label is not None else none
        folder = root / (label if label is not None else "_none")
        if count:
            folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            classes = [index] if label is not None else []
            image = labelled_image(classes, seed=seed * 1_000_003 + index * 10_007 + i, size=size)
            image.save(folder / f"{i:04d}.jpg", quality=quality)
    return root


def write_labelled_manifest(
    root: str | Path, labels: Sequence[str], count: int, *, rate: float = 0.3, max_labels: int = 3,
    size: tuple[int, int] = (256, 192), seed: int = 0, name: str = "manifest.jsonl",
) -> Path:
    """A multi-label dataset: ``count`` images under ``root/images/`` each showing each
    label with probability ``rate`` (at most ``max_labels``), and a JSONL manifest."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        present = [j for j in range(len(labels)) if rng.random() < rate][:max_labels]
        labelled_image(present, seed=seed * 1_000_003 + i, size=size).save(root / "images" / f"{i:05d}.jpg", quality=90)
        lines.append(json.dumps({"image": f"images/{i:05d}.jpg", "labels": [labels[j] for j in present]}))
    manifest = root / name
    manifest.write_text("\n".join(lines) + "\n")
    return manifest
