"""Few-shot examples learnt from a labelled dataset: ``zstagger calibrate --examples K``.

K images per label are picked from the data and written into the calibrated taxonomy as
its ``examples`` (with their vectors, so it is self-contained). What they are worth is
measured the way thresholds are: by k-fold cross-validation, where each fold's examples
are picked from the other folds only, its thresholds are chosen on the other folds'
images that are not examples, and the fold is then scored and judged. The pooled
held-out predictions give the per-label figures and one summary figure (top-1 accuracy
for single-label taxonomies, macro average precision for multi-label ones), reported next
to the same figures without examples.

A background label ("none of the above") is given K images that show no label. Labels
matched by known images alone take no examples. The picked images' embeddings are the
dataset's own (already computed for scoring), so nothing is encoded again.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from ..fewshot import ImageSet, build_pack, read_pack
from ..images import is_url
from ..taxonomy import IMAGE_KINDS, Taxonomy
from .metrics import Bootstrap, multi_label, single_label_levels
from .models import Estimate, ExamplesComparison, LabelCalibrationResult
from .scored import ScoredDataset, rescore


def pick_examples(scored: ScoredDataset, rows: np.ndarray, k: int, seed: int = 0) -> dict[int, np.ndarray]:
    """Up to ``k`` of ``rows`` per label (label index -> dataset rows): images that show the
    label; for a background label, images that show none."""
    rng = np.random.default_rng(seed)
    none = ~scored.truth.any(axis=1)
    picks = {}
    for i, label in enumerate(scored.taxonomy.labels):
        if label.match_only:
            continue
        candidates = rows[(none if label.background else scored.truth[:, i])[rows]]
        if len(candidates):
            picks[i] = np.sort(rng.choice(candidates, size=min(k, len(candidates)), replace=False))
    return picks


def with_examples(scored: ScoredDataset, source: Taxonomy, picks: dict[int, np.ndarray], image_sets, *,
                  fingerprint: str, model: str, preprocessing: str) -> Taxonomy:
    """``source`` with the picked images as the examples of their labels, and every image
    set's vectors for this model inline (the source's other image sets are kept)."""
    assert scored.embeddings is not None
    spec = source.model_dump(mode="json")
    if source.has_images:  # its own relative image paths keep naming the same files wherever it is written
        spec["examples_root"] = source.images_base()
    new_sets = {}
    for i, rows in picks.items():
        refs = [_portable(scored.items[row].ref) for row in rows]
        spec["labels"][i]["examples"] = refs
        new_sets[(source.labels[i].name, "examples")] = ImageSet.of(
            source.labels[i].name, "examples", refs, refs, scored.embeddings[rows])
    sets = []
    for label in source.labels:
        for kind in IMAGE_KINDS:
            found = new_sets.get((label.name, kind)) or (image_sets.get(label.name, kind) if image_sets is not None else None)
            if found is not None:
                sets.append(found)
    pack = build_pack(scored.embeddings.shape[1], sets)
    info = read_pack(pack)
    spec["image_vectors"] = {fingerprint: {
        "model": model, "preprocessing": preprocessing, "dim": info.dim, "count": info.count, "sha256": info.sha256,
        "size": info.size, "inline": base64.b64encode(pack).decode("ascii"),
    }}
    return Taxonomy.parse(spec, source=f"taxonomy {source.name!r} with examples")


def _portable(ref: str) -> str:
    return ref if is_url(ref) else os.path.abspath(ref)


class ExampleFolds:
    """The ``fold_scorer`` of :func:`~zstagger.evaluation.calibrate.calibrate_scored` for
    few-shot examples, which also keeps every fold's held-out scores (pooled)."""

    def __init__(self, scored: ScoredDataset, k: int, build: Callable[[dict[int, np.ndarray]], ScoredDataset], seed: int = 0):
        self.scored, self.k, self.build, self.seed = scored, k, build, seed
        n, count = len(scored.items), len(scored.taxonomy.labels)
        self.scores = np.zeros((n, count))
        self.matched = np.zeros((n, count), dtype=bool)
        self.tagged: list[list[int]] = [[] for _ in range(n)]

    def __call__(self, train: np.ndarray) -> tuple[ScoredDataset, np.ndarray]:
        picks = pick_examples(self.scored, train, self.k, self.seed)
        fold = self.build(picks)
        test = np.setdiff1d(np.arange(len(self.scored.items)), train)
        self.scores[test], self.matched[test] = fold.scores[test], fold.matched[test]
        for row in test:
            self.tagged[row] = fold.tagged[row]
        learnt = np.unique(np.concatenate(list(picks.values()))) if picks else np.zeros(0, dtype=np.int64)
        return fold, learnt

    def pooled(self, like: ScoredDataset) -> ScoredDataset:
        """The held-out predictions of every fold, as one scored dataset."""
        return replace(like, scores=self.scores, matched=self.matched, tagged=self.tagged,
                       verdicts=[like.classifier.verdict(t) for t in self.tagged])


def summary_figure(scored: ScoredDataset, boot: Bootstrap) -> tuple[str, Estimate]:
    """Top-1 accuracy at the top level (single-label) or macro average precision (multi-label)."""
    if scored.taxonomy.mode == "single":
        return "top-1 accuracy", single_label_levels(scored, boot)[0].top1
    return "macro average precision", Estimate(value=multi_label(scored, boot)[1].macro_average_precision)


def compare(scored: ScoredDataset, final: ScoredDataset, folds: ExampleFolds, picks: dict[int, np.ndarray],
            without: list[LabelCalibrationResult], boot: Bootstrap) -> ExamplesComparison:
    metric, before = summary_figure(scored, boot)
    _, after = summary_figure(folds.pooled(final), boot)
    names = [label.name for label in final.taxonomy.labels]
    return ExamplesComparison(
        per_label=folds.k, labels={names[i]: len(rows) for i, rows in picks.items()}, metric=metric,
        without_examples=before, with_examples=after, labels_without_examples=without,
    )


__all__ = ["ExampleFolds", "compare", "pick_examples", "rescore", "with_examples"]
