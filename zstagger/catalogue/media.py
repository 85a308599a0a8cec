"""Stored animations and videos judged again: the frames the store kept, under another taxonomy.

What :mod:`.retag` and :mod:`.diff` do with a page's animations and videos (its images go
through the Tagger's array scoring): each is judged from its :class:`~zstagger.media.MediaRecord`
by :meth:`~zstagger.Tagger.rejudge_media` (aggregation, segments and early exit recomputed; no
file read, nothing decoded). One whose kept judgement stopped early, before the point where
this taxonomy would stop, cannot be judged without its frames: it becomes an error record of
type ``media_incomplete`` saying so.
"""

from __future__ import annotations

import numpy as np

from ..media import MediaRecord
from ..results import TagResult
from ..tagger import Tagger
from ..taxonomy import Taxonomy

INCOMPLETE = "media_incomplete"


def rejudge(tagger: Tagger, record: MediaRecord, name: str, taxonomy: Taxonomy, top_k: int | None = None,
            source: str = "store") -> TagResult:
    """The stored media's result under ``taxonomy``, or its ``media_incomplete`` error record."""
    result = tagger.rejudge_media(record, name, taxonomy, top_k=top_k, source=source)
    if result is not None:
        return result
    end = float(record.times[-1])
    return TagResult.failed(
        name, taxonomy.name, INCOMPLETE,
        f"the store keeps this {record.kind}'s frames up to {end:g} s only (its tagging stopped early on a block label); "
        f"{taxonomy.name} would judge frames after that: tag the file again (or set early exit to 0 for catalogues "
        "that are re-judged)", provenance=tagger.provenance(taxonomy, source))


def page_lines(tagger: Tagger, taxonomy: Taxonomy, references: list[str], embeds: np.ndarray,
               media: dict[int, MediaRecord], top_k: int | None, source: str) -> list[str]:
    """A page's JSON lines in store order: images scored as arrays, media judged from their frames."""
    if not media:
        return tagger.result_lines(taxonomy, references, embeds, top_k, source=source)
    images = [n for n in range(len(references)) if n not in media]
    lines: list[str] = [""] * len(references)
    if images:
        scored = tagger.result_lines(taxonomy, [references[n] for n in images], embeds[images], top_k, source=source)
        for n, line in zip(images, scored):
            lines[n] = line
    for n, record in media.items():
        lines[n] = rejudge(tagger, record, references[n], taxonomy, top_k, source).to_json()
    return lines


def page_results(tagger: Tagger, taxonomy: Taxonomy, references: list[str], embeds: np.ndarray,
                 media: dict[int, MediaRecord], top_k: int | None, source: str) -> list[TagResult]:
    """:func:`page_lines` as result objects."""
    out = tagger.results(taxonomy, references, embeds, [None] * len(references), top_k, source=source)
    for n, record in media.items():
        out[n] = rejudge(tagger, record, references[n], taxonomy, top_k, source)
    return out
