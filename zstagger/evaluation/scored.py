"""A labelled dataset run through a tagger: every label's score per readable image, and the truth.

Eval and calibrate both start here. Image embeddings come from the image-embedding cache
when the tagger has one, so scoring a dataset a second time reads no pixels and runs
no model. Unreadable images are kept aside with their error records, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from ..classifier import TaxonomyClassifier
from ..tagger import Tagger
from ..taxonomy import Taxonomy
from .datasets import LabelledDataset, LabelledImage
from .models import UnreadableImage

UNREADABLE_SHOWN = 10


@dataclass
class ScoredDataset:
    taxonomy: Taxonomy
    classifier: TaxonomyClassifier
    items: list[LabelledImage]  # the readable images, in dataset order
    truth: np.ndarray  # (N, L) bool over taxonomy.labels; ancestors of a true label are true too
    scores: np.ndarray  # (N, L) float64
    tagged: list[list[int]]  # label indices that became tags (thresholds applied)
    verdicts: list[str | None]
    unreadable: list[UnreadableImage] = field(default_factory=list)
    cache_hits: int = 0
    cache_misses: int = 0
    embeddings: np.ndarray | None = None  # (N, D) unit image embeddings (for choosing few-shot examples)
    matched: np.ndarray | None = None  # (N, L) bool: known-image matches

    @property
    def names(self) -> list[str]:
        return [label.name for label in self.taxonomy.labels]

    def predicted(self) -> np.ndarray:
        """(N, L) bool: which labels became tags."""
        out = np.zeros_like(self.truth)
        for row, tagged in enumerate(self.tagged):
            out[row, tagged] = True
        return out


def truth_matrix(items: list[LabelledImage], taxonomy: Taxonomy) -> np.ndarray:
    index = {label.name: i for i, label in enumerate(taxonomy.labels)}
    truth = np.zeros((len(items), len(index)), dtype=bool)
    for row, item in enumerate(items):
        for name in item.labels:
            truth[row, [index[n] for n in taxonomy.path_of(name)]] = True
    return truth


def score_dataset(
    dataset: LabelledDataset, taxonomy: Taxonomy, tagger: Tagger, progress: Callable[[int], None] | None = None
) -> ScoredDataset:
    """Embed (or fetch from the cache) and score every image of ``dataset`` against ``taxonomy``."""
    compiled = tagger.classifier(taxonomy)
    before = tagger.cache_stats()
    items, vectors, unreadable = [], [], []
    position = 0
    for refs, embeds, errors in tagger.embed_batches(item.ref for item in dataset.items):
        done = iter(embeds if embeds is not None else [])
        for error in errors:
            item = dataset.items[position]
            position += 1
            if error is not None:
                unreadable.append(UnreadableImage(image=item.ref, type=error.kind, message=error.message))
                continue
            items.append(item)
            vectors.append(next(done))
        if progress is not None:
            progress(len(refs))
    after = tagger.cache_stats()
    embeddings = np.stack(vectors).astype(np.float32) if vectors else None
    return rescore(ScoredDataset(
        taxonomy=taxonomy, classifier=compiled, items=items, truth=truth_matrix(items, taxonomy),
        scores=np.zeros((0, len(taxonomy.labels))), tagged=[], verdicts=[], unreadable=unreadable,
        cache_hits=after["hits"] - before["hits"], cache_misses=after["misses"] - before["misses"], embeddings=embeddings,
    ), compiled)


def rescore(scored: ScoredDataset, compiled: TaxonomyClassifier) -> ScoredDataset:
    """The same images scored by another compiled taxonomy (with examples, say), from their embeddings."""
    count = len(compiled.taxonomy.labels)
    if scored.embeddings is None:
        scores, matched = np.zeros((0, count)), np.zeros((0, count), dtype=bool)
    else:
        batch = compiled.score(scored.embeddings)
        scores, matched = batch.scores, batch.matched
    tagged = compiled.tag_rows(scores, matched) if len(scores) else []
    return replace(scored, taxonomy=compiled.taxonomy, classifier=compiled, scores=scores, matched=matched, tagged=tagged,
                   verdicts=[compiled.verdict(t) for t in tagged])
