"""Which stored images a command works on, and whether the store's embeddings fit the model.

:func:`open_catalogue` is the one check every command that scores stored embeddings
makes (retag, diff, similar): the store must hold embeddings of the Tagger's model
(same fingerprint) and preprocessing mode, or the scores would mean nothing; otherwise
a :class:`~zstagger.errors.StoreError` names what the store holds and what to pass.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from ..embedding_cache import EmbeddingKey
from ..engine.vectors import normalize
from ..errors import ConfigurationError, StoreError
from ..store import EmbeddingStore, StoredBatch, StoredModel
from ..tagger import Tagger

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|min|h|d|w)\s*$")
# No "m": minutes or months? Minutes are "min"; months are not a fixed length (use days).
_UNIT_SECONDS = {"s": 1, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """``90d``, ``12h``, ``2w``, ``30min``, ``45s`` -> seconds."""
    match = _DURATION.match(text or "")
    if not match:
        raise ConfigurationError(f"{text!r} is not an age: give a number and a unit: s, min, h, d or w (90d, 12h, 2w, "
                                 "30min); months are not a fixed length, give days")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_since(text: str) -> float:
    """A point in time as Unix seconds: an ISO date or date-time (``2024-05-01``,
    ``2024-05-01T08:00``, local time unless it carries an offset), or an age (``7d``: 7 days ago)."""
    if _DURATION.match(text or ""):
        return time.time() - parse_age(text)
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except (ValueError, AttributeError):
        raise ConfigurationError(f"{text!r} is not a date: give 2024-05-01, 2024-05-01T08:00 or an age such as 7d") from None


class ReadOnly:
    """A store as a read-only image cache: the Tagger finds stored embeddings (no model load
    for them) but records nothing (looking something up is not tagging it)."""

    def __init__(self, store: EmbeddingStore):
        self.get_many = store.get_many

    def put_many(self, items: Sequence[tuple[EmbeddingKey, np.ndarray]]) -> None:
        pass


@dataclass
class Catalogue:
    """The stored images of the Tagger's model, and the filters a command applies."""

    store: EmbeddingStore
    tagger: Tagger
    model: StoredModel
    since: float | None = None
    job_id: str | None = None
    upto: int | None = None  # the last image id when the command started: rows recorded meanwhile are left out

    def count(self) -> int:
        return self.store.count_images(self.model.id, since=self.since, job_id=self.job_id, upto=self.upto)

    def pages(self, page: int = 10_000, after: int = 0, upto: int | None = None) -> Iterator[tuple[StoredBatch, np.ndarray]]:
        """Pages of stored images with their unit embeddings (float32), as a cache hit gives them to the
        Tagger; image ids in (``after``, ``upto``] if given (within the catalogue's own bounds)."""
        last = self.upto if upto is None else min(upto, self.upto) if self.upto is not None else upto
        for batch in self.store.iter_images(self.model.id, since=self.since, job_id=self.job_id, upto=last, page=page,
                                            after=after):
            yield batch, normalize(batch.vectors.astype(np.float32))

    def page_bounds(self, page: int) -> list[tuple[int, int]]:
        """The selected images cut into id ranges of about ``page`` images each (for parallel readers)."""
        cuts = self.store.page_bounds(self.model.id, since=self.since, job_id=self.job_id, upto=self.upto, page=page)
        end = self.upto if self.upto is not None else self.store.last_image_id()
        starts = [0, *cuts]
        return [(lo, hi) for lo, hi in zip(starts, [*cuts, end]) if hi > lo]


def open_catalogue(store: EmbeddingStore, tagger: Tagger, *, since: float | None = None, job_id: str | None = None) -> Catalogue:
    """The store's images of ``tagger``'s model, or a StoreError saying why they cannot be scored with it."""
    models = store.models()
    fingerprint, mode = tagger.fingerprint, tagger.preprocessing
    found = next((m for m in models if m.fingerprint == fingerprint and m.mode == mode), None)
    if found is not None:
        return Catalogue(store, tagger, found, since, job_id, store.last_image_id())
    if not any(m.images for m in models):
        raise StoreError(f"the embedding store at {store.where} holds no images yet: tag with ZSTAGGER_STORE set to it first")
    same = [m for m in models if m.fingerprint == fingerprint and m.images]
    if same:
        other = same[0].mode
        raise StoreError(
            f"the embedding store at {store.where} holds embeddings of this model with {other} preprocessing, not {mode}: "
            f"set ZSTAGGER_EXACT_PREPROCESSING={1 if other == 'exact' else 0} to score them"
        )
    held = ", ".join(f"{m.name or '?'} (fingerprint {m.fingerprint}, {m.mode}, {m.images} images)" for m in models if m.images)
    raise StoreError(
        f"the embedding store at {store.where} holds embeddings of another model: {held}; not of {tagger.model_name} "
        f"(fingerprint {fingerprint}). Scores of one model's image embeddings against another's text embeddings mean "
        "nothing: pass --model with the checkpoint that built the store (a copied checkpoint keeps its fingerprint only "
        "if its files keep their modification times: cp -p, rsync -t)"
    )
