"""Where in an image a label comes from: :func:`explain_image`, behind ``zstagger explain`` and ``POST /v1/explain``.

The image is read under the tagger's image policy (size, pixel and decode limits), shrunk
so that one grid cell is about the model's input size, cut into windows
(:mod:`zstagger.engine.heatmap`), and every window is embedded in one batch and scored
against the taxonomy exactly as a whole image is. Which label: the one asked for, else the
image's first tag, else its best-scoring label. Sits beside the Tagger and uses only its
public methods; nothing here knows about HTTP or the command line.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from .embedder import NO_CACHE
from .engine.heatmap import cell_heat, overlay, window_boxes, window_cells
from .errors import ConfigurationError
from .images import ImageInput, describe, open_image
from .sources import is_source_url, read_bytes
from .tagger import Prepared, Tagger
from .taxonomy import Taxonomy

METHOD = "window scoring"
MIN_GRID, MAX_GRID, DEFAULT_GRID = 2, 8, 4


@dataclass
class Heatmap:
    """A label's heat over a grid of cells (row 0 at the top): each cell's mean score over the
    windows that cover it, on the scale of ``score`` (the label's score of the whole image)."""

    image: str
    taxonomy: str
    label: str
    score: float
    fired: bool
    grid: list[list[float]]
    windows: int
    method: str = METHOD

    def to_dict(self) -> dict:
        return asdict(self)

    def hottest_cell(self) -> tuple[int, int]:
        """(row, column) of the hottest cell."""
        heat = np.asarray(self.grid)
        return tuple(int(i) for i in np.unravel_index(int(np.argmax(heat)), heat.shape))  # type: ignore[return-value]


def explain_image(tagger: Tagger, image: ImageInput, taxonomy: Taxonomy, label: str | None = None,
                  grid: int = DEFAULT_GRID, sparse: bool = False) -> tuple[Heatmap, Image.Image]:
    """The heat map of ``label`` on ``image`` and the picture it was computed on (shrunk), for :func:`overlay_png`.
    ``sparse``: fewer windows (:func:`~zstagger.engine.heatmap.window_cells`; 5 instead of 9 at grid 4), about
    half the time, a coarser map."""
    if not MIN_GRID <= grid <= MAX_GRID:
        raise ConfigurationError(f"grid must be between {MIN_GRID} and {MAX_GRID} cells a side, got {grid}")
    if label is not None and label not in taxonomy.labels_by_name:
        raise ConfigurationError(f"taxonomy {taxonomy.name!r} has no label {label!r}")
    compiled = tagger.classifier(taxonomy)
    side = _input_side(tagger)
    if isinstance(image, str) and is_source_url(image):  # an object store or a plugin's scheme: read through it
        image = read_bytes(image, tagger.image_policy)
    with open_image(image, tagger.image_policy) as picture:
        working = _shrunk(picture, grid * side)
    windows = window_cells(grid, sparse=sparse)
    boxes = window_boxes(working.width, working.height, grid, windows)
    crops = [working] + [working.crop(box).resize((side, side), Image.BILINEAR) for box in boxes]
    pixels = [Prepared(None, pixels=tagger.encoder.preprocess(crop, False)) for crop in crops]
    embeds = _embed(tagger, pixels)
    batch = compiled.classify_batch(embeds[:1])
    scores = compiled.score(embeds).scores
    index = _label_index(compiled, batch, label)
    fired = bool(index in batch.tags[0])
    heat = cell_heat(scores[1:, index], grid, windows)
    return Heatmap(describe(image), taxonomy.name, compiled.names[index], float(scores[0, index]), fired,
                   heat.round(6).tolist(), len(windows)), working


def overlay_png(heatmap: Heatmap, picture: Image.Image, alpha: float = 0.5) -> bytes:
    """The picture with the heat map laid over it, as PNG bytes."""
    layered = overlay(np.asarray(picture.convert("RGB")), np.asarray(heatmap.grid), alpha)
    out = io.BytesIO()
    Image.fromarray(layered).save(out, format="PNG")
    return out.getvalue()


def _embed(tagger: Tagger, pixels: list[Prepared]) -> np.ndarray:
    """The windows' embeddings, split over the tagger's encoder lanes (on CPU each lane has its
    share of the cores, so one batch alone would use one share)."""
    lanes = max(1, min(tagger.lanes, len(pixels)))
    if lanes == 1:
        return tagger.embed_prepared(pixels, route=NO_CACHE)
    chunks = [pixels[i::lanes] for i in range(lanes)]
    with ThreadPoolExecutor(lanes, thread_name_prefix="zstagger-explain") as pool:
        parts = list(pool.map(lambda chunk: tagger.embed_prepared(chunk, route=NO_CACHE), chunks))
    out = np.empty((len(pixels), parts[0].shape[1]), dtype=parts[0].dtype)
    for i, part in enumerate(parts):
        out[i::lanes] = part
    return out


def _label_index(compiled, batch, label: str | None) -> int:
    if label is not None:
        return compiled.names.index(label)
    if batch.tags[0]:
        return int(batch.tags[0][0])
    return int(batch.ranked[0, 0])


def _input_side(tagger: Tagger) -> int:
    preprocessor = getattr(tagger.encoder, "preprocessor", None)
    size = getattr(preprocessor, "output_size", None) if preprocessor is not None else None
    return int(min(size)) if size else 224


def _shrunk(picture: Image.Image, longest: int) -> Image.Image:
    """An RGB copy no longer than ``longest`` pixels on its long side (smaller ones as they are)."""
    scale = longest / max(picture.size)
    if scale >= 1:
        return picture.convert("RGB").copy()
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return picture.convert("RGB").resize(size, Image.BILINEAR, reducing_gap=2.0)
