"""Re-tagging the back catalogue: a (new or changed) taxonomy applied to stored embeddings.

No image is read and no vision model runs: each page of stored embeddings goes through
the Tagger's own scoring (:meth:`~zstagger.Tagger.result_lines`, the same code as
``zstagger tag``), so a line of ``zstagger retag`` is the line ``zstagger tag`` wrote for
that image with the same model, preprocessing and embedding store, but for its
provenance's ``"source": "store"``. Animations and videos are judged again from the frames the
store kept of them (:mod:`.media`): nothing is decoded. The model is not loaded either when the taxonomy's text embeddings
and the model's scalars are in ``ZSTAGGER_CACHE_DIR`` (as for ``zstagger eval``).

Most of the time goes into writing the JSON (each score printed as ``json.dumps`` prints a
float), so big catalogues (from ``ZSTAGGER_RETAG_PARALLEL_FROM`` images) are cut into id
ranges that forked worker processes read, score and format side by side
(:func:`retag_text`); the lines still come out in store order, byte for byte what one
process writes.

Store order is the order the images were first recorded: a ``zstagger tag`` run records its
images in input order, a queued job chunk by chunk (each in input order) as chunks finish.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator

from ..results import TagResult
from ..taxonomy import Taxonomy
from .media import page_lines, page_results
from .selection import Catalogue

SOURCE = "store"
PAGE = 10_000
PARALLEL_FROM = 4 * PAGE  # fewer images than this: not worth starting processes (ZSTAGGER_RETAG_PARALLEL_FROM)

_forked: dict[str, tuple[Catalogue, Taxonomy, int | None, int]] = {}  # what forked workers inherit


def retag_lines(catalogue: Catalogue, taxonomy: Taxonomy, top_k: int | None = None, page: int = PAGE) -> Iterator[list[str]]:
    """JSON lines (the schema of ``zstagger tag``), one list per page of stored images, in the order they were recorded."""
    for batch, embeds in catalogue.pages(page):
        yield page_lines(catalogue.tagger, taxonomy, batch.references, embeds, batch.media, top_k, SOURCE)


def retag_text(catalogue: Catalogue, taxonomy: Taxonomy, top_k: int | None = None, page: int = PAGE,
               workers: int = 0, total: int | None = None,
               parallel_from: int = PARALLEL_FROM) -> Iterator[tuple[int, str]]:
    """:func:`retag_lines` as (lines, text ending in a newline) per page, made by ``workers``
    forked processes (0: one per core, at most 8) when there are ``parallel_from`` images or more."""
    workers = workers or min(8, os.cpu_count() or 1)
    total = catalogue.count() if total is None else total
    if workers < 2 or total < parallel_from or "fork" not in multiprocessing.get_all_start_methods():
        for lines in retag_lines(catalogue, taxonomy, top_k, page):
            yield len(lines), "".join(line + "\n" for line in lines)
        return
    # a few ranges per worker, however small the catalogue (pages of at most ``page``)
    ranges = catalogue.page_bounds(max(1, min(page, math.ceil(total / (4 * workers)))))
    catalogue.store.close()  # no connection or pool thread crosses the fork: each worker opens its own
    _forked["work"] = (catalogue, taxonomy, top_k, page)
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            waiting: deque = deque()
            for bounds in ranges:
                waiting.append(pool.apply_async(_retag_range, (bounds,)))
                if len(waiting) >= 2 * workers:  # bounded read-ahead: memory stays a few pages
                    yield waiting.popleft().get()
            while waiting:
                yield waiting.popleft().get()
    finally:
        _forked.clear()


def _retag_range(bounds: tuple[int, int]) -> tuple[int, str]:
    """In a worker: the lines of the images with ids in (lo, hi]."""
    catalogue, taxonomy, top_k, page = _forked["work"]
    lines: list[str] = []
    for batch, embeds in catalogue.pages(page, after=bounds[0], upto=bounds[1]):
        lines += page_lines(catalogue.tagger, taxonomy, batch.references, embeds, batch.media, top_k, SOURCE)
    return len(lines), "".join(line + "\n" for line in lines)


def retag(catalogue: Catalogue, taxonomy: Taxonomy, top_k: int | None = None, page: int = PAGE) -> Iterator[TagResult]:
    """The same as :class:`~zstagger.TagResult` objects (for Python callers)."""
    for batch, embeds in catalogue.pages(page):
        yield from page_results(catalogue.tagger, taxonomy, batch.references, embeds, batch.media, top_k, SOURCE)
