"""The stored images nearest to one image (re-uploads, near copies), for investigations.

The query image is embedded through the Tagger with the store as a read-only cache (a
stored image is not decoded, and looking it up records nothing), then compared with
every stored embedding of the model by cosine, a page at a time, keeping the best.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from ..engine.vectors import normalize
from ..errors import ConfigurationError
from ..images import ImageInput, describe
from .selection import Catalogue

REFERENCES_SHOWN = 5


class StoredReference(BaseModel):
    image: str
    job_id: str | None
    seen: float  # Unix seconds


class SimilarImage(BaseModel):
    sha256: str
    similarity: float  # cosine of the two embeddings: 1.0 is the same image bytes (or pixels)
    images: int  # stored images with this content (re-uploads under other names)
    references: list[StoredReference]  # the most recently seen of them


def find_similar(catalogue: Catalogue, image: ImageInput, top: int = 10) -> list[SimilarImage]:
    """The ``top`` stored contents most similar to ``image``, most similar first."""
    if top < 1:
        raise ConfigurationError(f"--top must be at least 1, got {top}")
    _, embeds, errors = next(catalogue.tagger.embed_batches([image]))
    if errors[0] is not None:
        raise ConfigurationError(f"cannot read {describe(image)}: {errors[0].message}")
    query = embeds[0].astype(np.float32)
    best_hashes: list[str] = []
    best = np.empty(0, dtype=np.float32)
    for hashes, vectors in catalogue.store.iter_embeddings(catalogue.model.id):
        sims = normalize(vectors.astype(np.float32)) @ query
        keep = np.argpartition(-sims, min(top, len(sims)) - 1)[:top] if len(sims) > top else np.arange(len(sims))
        best = np.concatenate([best, sims[keep]])
        best_hashes += [hashes[i] for i in keep.tolist()]
        if len(best) > top:
            order = np.argsort(-best, kind="stable")[:top]
            best, best_hashes = best[order], [best_hashes[i] for i in order.tolist()]
    order = np.argsort(-best, kind="stable")
    found = catalogue.store.images_with(catalogue.model.id, [best_hashes[i] for i in order.tolist()], REFERENCES_SHOWN)
    return [
        SimilarImage(sha256=best_hashes[i], similarity=round(float(best[i]), 6), images=found.get(best_hashes[i], (0, []))[0],
                     references=[StoredReference(image=s.reference, job_id=s.job_id or None, seen=s.seen)
                                 for s in found.get(best_hashes[i], (0, []))[1]])
        for i in order.tolist()
    ]
