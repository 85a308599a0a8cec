"""Where in an image a label's score comes from: window scoring on a grid. Pure numpy.

The image is cut into a ``grid x grid`` array of cells; windows half the image's side
(``grid // 2`` cells, at every cell position) are each scored as an image of their own, and a
cell's heat is the mean score of the windows that cover it. Chosen over the alternatives
for these reasons:

- it needs nothing but image embeddings, so it works for every model and runtime zstagger
  runs (CLIP, SigLIP, an OpenVINO vision tower that gives pooled embeddings only) and for
  every scoring rule and few-shot method (a window is scored exactly as an image is);
- raw patch-token similarity in CLIP ViTs tends to light up the background rather than the
  object ("opposite visualization", CLIP Surgery, Li et al. 2023), which needs surgery on the
  attention layers to fix; gScoreCAM needs activations and gradients of a torch model;
- its cost is bounded and known: ``(grid - grid // 2 + 1)**2`` windows in one batch (9 at the
  default grid of 4), plus the whole image. Windows of one cell as well (``spans=(1, 2)``)
  sharpen the map at nearly three times the cost; half-size windows keep enough of an object
  in view for the model to recognise it.

A heat value is a score in [0, 1] on the same scale as the label's score of the whole image.
"""

from __future__ import annotations

import numpy as np

Box = tuple[int, int, int, int]  # left, top, right, bottom in pixels


def window_cells(grid: int, spans: tuple[int, ...] | None = None, sparse: bool = False) -> list[tuple[int, int, int]]:
    """Every window as (row, column, span in cells), spans in the given sizes (default: half the
    grid, at least one cell), row-major. ``sparse``: windows that tile the grid (the last row
    and column flush with its edge) plus those on the lattice shifted by half a window, which
    straddle the tiles' seams: at the default grid of 4, the four quadrants and the centre (5
    windows instead of 9); every cell is still covered."""
    spans = spans or (max(1, grid // 2),)
    out = []
    for span in (s for s in spans if s <= grid):
        last = grid - span
        if not sparse:
            places = [(row, col) for row in range(last + 1) for col in range(last + 1)]
        else:
            tiles = sorted({*range(0, last + 1, span), last})
            seams = sorted({p + span // 2 for p in tiles if 0 < span // 2 and p + span // 2 <= last})
            places = sorted({(r, c) for r in tiles for c in tiles} | {(r, c) for r in seams for c in seams})
        out.extend((row, col, span) for row, col in places)
    return out


def window_boxes(width: int, height: int, grid: int, windows: list[tuple[int, int, int]]) -> list[Box]:
    """The pixel box of each window in an image of ``width x height``."""
    xs = np.linspace(0, width, grid + 1).round().astype(int)
    ys = np.linspace(0, height, grid + 1).round().astype(int)
    return [(int(xs[col]), int(ys[row]), int(xs[col + span]), int(ys[row + span])) for row, col, span in windows]


def cell_heat(scores: np.ndarray, grid: int, windows: list[tuple[int, int, int]]) -> np.ndarray:
    """(grid, grid): each cell's mean window score over the windows that cover it."""
    total = np.zeros((grid, grid), dtype=np.float64)
    count = np.zeros((grid, grid), dtype=np.float64)
    for score, (row, col, span) in zip(np.asarray(scores, dtype=np.float64).tolist(), windows):
        total[row:row + span, col:col + span] += score
        count[row:row + span, col:col + span] += 1
    return total / np.maximum(count, 1)


def upsample(heat: np.ndarray, width: int, height: int) -> np.ndarray:
    """A (grid, grid) heat map as (height, width), bilinear between cell centres."""
    rows, cols = heat.shape
    y = np.clip((np.arange(height) + 0.5) / height * rows - 0.5, 0, rows - 1)
    x = np.clip((np.arange(width) + 0.5) / width * cols - 0.5, 0, cols - 1)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    y1, x1 = np.minimum(y0 + 1, rows - 1), np.minimum(x0 + 1, cols - 1)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    top = heat[y0][:, x0] * (1 - fx) + heat[y0][:, x1] * fx
    bottom = heat[y1][:, x0] * (1 - fx) + heat[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def overlay(pixels: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """An RGB uint8 image (H, W, 3) with the heat map laid over it: blue (least) to red (most),
    stretched over the map's own range."""
    height, width = pixels.shape[:2]
    low, high = float(heat.min()), float(heat.max())
    level = (upsample(heat, width, height) - low) / (high - low) if high > low else np.zeros((height, width))
    colour = np.stack([np.clip(1.5 - np.abs(4 * level - c), 0, 1) for c in (3.0, 2.0, 1.0)], axis=-1) * 255  # jet-like
    return (pixels.astype(np.float64) * (1 - alpha) + colour * alpha).clip(0, 255).astype(np.uint8)
