"""Accuracy figures from a scored dataset, with bootstrap intervals.

- single-label taxonomies, per depth of the hierarchy: top-1 and top-5 accuracy, the
  accuracy of the tag (thresholds applied, "none" included), per-label precision,
  recall, F1 and support, the confusion matrix and the most confused pairs;
- multi-label taxonomies: per-label precision, recall and F1 at the taxonomy's
  thresholds, average precision and ROC-AUC (threshold-free), micro and macro averages;
- taxonomies with actions: the verdict against the strictest true action, with misses
  (block-worthy got allow) and false alarms (clean got block or review).

Intervals: the images are resampled with replacement ``rounds`` times (the same
resamples for every figure); each interval is the 2.5th-97.5th percentile of the figure
over the resamples in which it is defined. Every figure is a ratio of per-image sums, so a
report registers all of its figures first and resolves them in one pass over the resamples
(:class:`Bootstrap`), in memory that grows with the images but not with the rounds.

The figures follow scikit-learn's definitions exactly (the tests compare every one of
them with scikit-learn's own functions) but are computed here with numpy: they are counts
and one sort each, and importing ``sklearn.metrics`` takes 1.5 s, more than everything
else a fully cached evaluation of 1,000 images does.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..taxonomy import ACTION_SEVERITY
from .models import Averages, ConfusedPair, Estimate, LabelMetrics, LevelMetrics, VerdictMetrics
from .scored import ScoredDataset

NONE = "(none)"
ACTIONS = list(ACTION_SEVERITY)  # allow, review, block
TOP_K = 5
MOST_CONFUSED = 10


_OF_THE_SUMS = object()  # a figure's value: its ratio of sums (unless computed elsewhere and given)


class Bootstrap:
    """Resamples of ``n`` images, shared by every figure of one report.

    Resample ``r`` draws ``n`` images with replacement: row ``r`` of what
    ``default_rng(seed).integers(0, n, size=(rounds, n))`` would give, so that every figure
    sees the same resamples. A figure is a ratio of sums of per-image values (true positives
    over predictions, ...): :meth:`figure` registers its two columns, compactly (a byte an
    image for 0/1 values), and the first figure whose interval is needed resolves all those
    registered so far in one pass over the resamples (:meth:`resolve`). The pass draws one
    resample at a time and turns it into per-image counts (``bincount``); a block of them
    multiplies the registered columns. Memory is a block of counts and the columns, never
    rounds x images: it does not grow with the rounds.
    """

    BLOCK_BYTES = 64 << 20  # counts of the resamples multiplied at once
    CHUNK_IMAGES = 1 << 16  # images whose columns are converted to floating point at once

    def __init__(self, n: int, rounds: int = 1000, seed: int = 0):
        self.n, self.rounds, self.seed = n, rounds, seed
        self._columns: list[np.ndarray] = []  # registered, compact; the first ``_resolved`` already summed
        self._known: dict[tuple, int] = {}  # a column's dtype and digest -> its index (equal columns kept once)
        self._sums = np.zeros((rounds, 0))  # (rounds, resolved columns): each column's sum in each resample
        self._resolved = 0

    def figure(self, numerator: np.ndarray, denominator: np.ndarray,
               value: float | None | object = _OF_THE_SUMS) -> Figure:
        """sum(numerator) / sum(denominator) over images (or ``value``, computed elsewhere), with its
        interval once resolved. Per-image counts: for precision, true positives over predictions;
        for recall, true positives over positives; for accuracy, correct over eligible images."""
        num, den = np.asarray(numerator), np.asarray(denominator)
        total = float(den.sum(dtype=np.float64))
        if value is _OF_THE_SUMS:
            value = float(num.sum(dtype=np.float64)) / total if total else None
        return Figure(self, value, int(total), self._column(num), self._column(den))  # type: ignore[arg-type]

    def ratio(self, numerator: np.ndarray, denominator: np.ndarray) -> tuple[Estimate, np.ndarray]:
        """A :meth:`figure`, resolved at once: its estimate and its resampled values."""
        figure = self.figure(numerator, denominator)
        return figure.estimate(), figure.samples()

    def interval(self, value: float | None, numerator: np.ndarray, denominator: np.ndarray) -> tuple[Estimate, np.ndarray]:
        """``value`` (computed elsewhere, e.g. by scikit-learn) with the interval of the ratio it is."""
        figure = self.figure(numerator, denominator, value)
        return figure.estimate(), figure.samples()

    def _column(self, values: np.ndarray) -> int:
        compact = _compact(values)
        key = (compact.dtype.str, compact.shape, hashlib.blake2b(compact.tobytes(), digest_size=16).digest())
        if key not in self._known:
            self._known[key] = len(self._columns)
            self._columns.append(compact)
        return self._known[key]

    def sums(self, column: int) -> np.ndarray:
        """The column's sum in each resample (resolving what is registered, if need be)."""
        if column >= self._resolved:
            self.resolve()
        return self._sums[:, column]

    def resolve(self) -> None:
        """Sum every registered column not yet summed, in each resample: one pass over the resamples."""
        pending = self._columns[self._resolved:]
        if not pending:
            return
        sums = np.zeros((self.rounds, len(pending)))
        if self.n and self.rounds:
            # Sums of small integers are exact in float32 while they stay under 2**24 (so are all partial sums)
            peak = max(float(np.abs(c.astype(np.float64)).max(initial=0)) for c in pending) * self.n
            exact32 = all(np.issubdtype(c.dtype, np.integer) for c in pending) and peak < 2**24
            dtype = np.float32 if exact32 else np.float64
            block = max(1, min(self.rounds, self.BLOCK_BYTES // (np.dtype(dtype).itemsize * self.n)))
            rng = np.random.default_rng(self.seed)
            counts = np.empty((block, self.n), dtype=dtype)
            for start in range(0, self.rounds, block):
                rows = min(block, self.rounds - start)
                for r in range(rows):
                    counts[r] = np.bincount(rng.integers(0, self.n, size=self.n), minlength=self.n)
                for lo in range(0, self.n, self.CHUNK_IMAGES):
                    hi = min(self.n, lo + self.CHUNK_IMAGES)
                    values = np.stack([column[lo:hi] for column in pending], axis=1).astype(dtype)
                    sums[start:start + rows] += counts[:rows, lo:hi] @ values
        self._sums = np.concatenate([self._sums, sums], axis=1)
        self._resolved = len(self._columns)


class Figure:
    """A ratio of per-image sums on the dataset and, once its :class:`Bootstrap` resolves, in
    every resample: :meth:`estimate` (value, 95% interval, n) and :meth:`samples`."""

    def __init__(self, boot: Bootstrap, value: float | None, n: int, numerator: int, denominator: int):
        self.boot, self.value, self.n = boot, value, n
        self._num, self._den = numerator, denominator

    def samples(self) -> np.ndarray:
        """The ratio in each resample (NaN where the denominator is 0)."""
        if not self.boot.rounds or not self.boot.n:
            return np.full(self.boot.rounds, np.nan)
        nums, dens = self.boot.sums(self._num), self.boot.sums(self._den)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(dens > 0, nums.astype(np.float64) / np.where(dens > 0, dens, 1), np.nan)

    def estimate(self, n: int | None = None) -> Estimate:
        return _estimate(self.value, self.samples(), self.n if n is None else n)


def _compact(values: np.ndarray) -> np.ndarray:
    """Per-image values in the smallest type that holds them exactly (a byte for 0/1 values)."""
    values = np.asarray(values)
    if values.dtype == bool:
        return values.astype(np.uint8)
    if np.issubdtype(values.dtype, np.integer) or (values.size and np.array_equal(values, np.round(values))):
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        for dtype in (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.int64):
            info = np.iinfo(dtype)
            if info.min <= low and high <= info.max:
                return values.astype(dtype)
    return values.astype(np.float64)


def _estimate(value: float | None, samples: np.ndarray, n: int) -> Estimate:
    finite = samples[np.isfinite(samples)]
    if value is None or finite.size < max(10, 0.5 * samples.size):
        return Estimate(value=value, n=n)  # too rarely defined to give an honest interval
    low, high = np.percentile(finite, [2.5, 97.5])
    return Estimate(value=value, low=float(low), high=float(high), n=n)


def precision_recall_curve(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recall (rising from 0) and precision at each distinct score, highest first, where recall
    rises: the precision-recall curve whose area, precision at each step times the recall it
    adds, is :func:`average_precision` (scikit-learn's ``precision_recall_curve`` points).

    Recall rises only at the scores of positives, so those are the only thresholds evaluated:
    at each, the positives and all images scored at least that high are counted by binary
    search in sorted copies (a million images: one sorted copy, no index arrays).
    """
    truth = np.asarray(truth, dtype=bool)
    everything = np.sort(np.asarray(scores), axis=None)
    positives = np.sort(np.asarray(scores)[truth], axis=None)
    steps = np.unique(positives)[::-1]  # the positives' distinct scores, highest first
    tp = len(positives) - np.searchsorted(positives, steps, side="left")
    predicted = len(everything) - np.searchsorted(everything, steps, side="left")
    return np.r_[0.0, tp / len(positives)], np.r_[1.0, tp / predicted]


def curve_area(recall: np.ndarray, precision: np.ndarray) -> float:
    """The area of a :func:`precision_recall_curve`: each step's precision times the recall it gains."""
    return float(np.sum(np.diff(recall) * precision[1:]))


def average_precision(truth: np.ndarray, scores: np.ndarray) -> float:
    """scikit-learn's ``average_precision_score``: sum over distinct thresholds (highest
    first) of the precision times the recall gained there."""
    return curve_area(*precision_recall_curve(truth, scores))


def roc_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """scikit-learn's ``roc_auc_score``: the chance that a positive outscores a negative (ties count half)."""
    truth = np.asarray(truth, dtype=bool)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]  # average 1-based rank of each score
    positives = int(truth.sum())
    negatives = len(truth) - positives
    return float((ranks[truth].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def confusion(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> np.ndarray:
    """scikit-learn's ``confusion_matrix``: rows true class, columns predicted class."""
    index = {name: i for i, name in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(matrix, ([index[c] for c in y_true], [index[c] for c in y_pred]), 1)
    return matrix


@dataclass
class LabelFigures:
    """One label's figures, registered with the bootstrap; :meth:`build` once they are all registered."""

    name: str
    threshold: float
    support: int
    predicted: int
    precision: Figure
    recall: Figure
    f1: Figure
    average_precision: float | None
    roc_auc: float | None

    def build(self) -> LabelMetrics:
        return LabelMetrics(
            label=self.name, threshold=self.threshold, support=self.support, predicted=self.predicted,
            precision=self.precision.estimate(), recall=self.recall.estimate(), f1=self.f1.estimate(n=self.support),
            average_precision=self.average_precision, roc_auc=self.roc_auc,
        )

    def samples(self) -> dict[str, np.ndarray]:
        return {"precision": self.precision.samples(), "recall": self.recall.samples(), "f1": self.f1.samples()}


def label_figures(boot: Bootstrap, name: str, threshold: float, truth: np.ndarray, predicted: np.ndarray,
                  scores: np.ndarray | None) -> LabelFigures:
    """One label's figures from boolean truth/prediction vectors (and its scores, for AP and ROC-AUC)."""
    hit = truth & predicted
    ap = auc = None
    if scores is not None and truth.any():
        ap = average_precision(truth, scores)
        if not truth.all():
            auc = roc_auc(truth, scores)
    return LabelFigures(
        name=name, threshold=threshold, support=int(truth.sum()), predicted=int(predicted.sum()),
        precision=boot.figure(hit, predicted), recall=boot.figure(hit, truth),
        f1=boot.figure(2 * hit.astype(np.uint8), truth.astype(np.uint8) + predicted),  # 2TP / (2TP + FP + FN)
        average_precision=ap, roc_auc=auc,
    )


def label_metrics(boot: Bootstrap, name: str, threshold: float, truth: np.ndarray, predicted: np.ndarray,
                  scores: np.ndarray | None) -> tuple[LabelMetrics, dict[str, np.ndarray]]:
    """:func:`label_figures`, resolved: the metrics and their resampled values."""
    figures = label_figures(boot, name, threshold, truth, predicted, scores)
    return figures.build(), figures.samples()


# -- single-label ---------------------------------------------------------------------------


def single_label_levels(scored: ScoredDataset, boot: Bootstrap) -> list[LevelMetrics]:
    return single_label_figures(scored, boot)()


def single_label_figures(scored: ScoredDataset, boot: Bootstrap) -> Callable[[], list[LevelMetrics]]:
    """Register every figure of every level; returns what builds the levels (one bootstrap pass for all)."""
    taxonomy = scored.taxonomy
    names = scored.names
    predicted = scored.predicted()
    pending = []
    for d, members, eligible, true_at in _depths(scored):
        pred_at = _label_at_depth(predicted, members)
        classes = [names[i] for i in members] + [NONE]
        y_true = np.array([names[i] if i >= 0 else NONE for i in true_at], dtype=object)
        y_pred = np.array([names[i] if i >= 0 else NONE for i in pred_at], dtype=object)
        accuracy = boot.figure((y_true == y_pred) & eligible, eligible)
        # top-k: the true label among the k best-scored labels of this depth (images with a true label here)
        k = min(TOP_K, len(members))
        ranked = np.argsort(-scored.scores[:, members], axis=1, kind="stable")
        has_truth = true_at >= 0
        rank_of_truth = np.full(len(true_at), len(members))
        for row in np.flatnonzero(has_truth):
            rank_of_truth[row] = int(np.flatnonzero(np.asarray(members)[ranked[row]] == true_at[row])[0])
        top1 = boot.figure(has_truth & (rank_of_truth < 1), has_truth)
        topk = boot.figure(has_truth & (rank_of_truth < k), has_truth)
        labels = []
        for i in members:
            t, p = (y_true == names[i]) & eligible, (y_pred == names[i]) & eligible
            labels.append(label_figures(boot, names[i], taxonomy.threshold_of(taxonomy.labels[i]), t, p,
                                        _judged_scores(scored, i, eligible)))
        matrix = confusion(y_true[eligible], y_pred[eligible], classes)
        pairs = [
            ConfusedPair(true=classes[a], predicted=classes[b], count=int(matrix[a, b]))
            for a, b in zip(*np.nonzero(matrix)) if a != b
        ]
        pairs.sort(key=lambda pair: (-pair.count, pair.true, pair.predicted))
        pending.append((d, int(eligible.sum()), top1, topk, k, accuracy, labels, classes, matrix, pairs))

    def build() -> list[LevelMetrics]:
        return [
            LevelMetrics(depth=d, images=images, top1=top1.estimate(), top5=topk.estimate(), top_k=k,
                         accuracy=accuracy.estimate(), labels=[figures.build() for figures in labels],
                         confusion_labels=classes, confusion=matrix.tolist(), most_confused=pairs[:MOST_CONFUSED])
            for d, images, top1, topk, k, accuracy, labels, classes, matrix, pairs in pending
        ]

    return build


def _depths(scored: ScoredDataset):
    """Per depth of a single-label hierarchy: (depth, its non-background labels, the images judged
    there, each image's true label there or -1). Depth 0 judges every image ("none" is a valid
    truth); deeper levels judge the images labelled that deep."""
    taxonomy = scored.taxonomy
    depth = [len(taxonomy.path_of(label.name)) - 1 for label in taxonomy.labels]
    background = [label.background for label in taxonomy.labels]
    for d in sorted({depth[i] for i in range(len(depth)) if not background[i]}):
        members = [i for i in range(len(depth)) if depth[i] == d and not background[i]]
        true_at = _label_at_depth(scored.truth, members)
        eligible = np.ones(len(true_at), bool) if d == 0 else true_at >= 0
        yield d, members, eligible, true_at


def _judged_scores(scored: ScoredDataset, label: int, eligible: np.ndarray) -> np.ndarray:
    return np.where(eligible, scored.scores[:, label], 0.0)


def ranking_inputs(scored: ScoredDataset) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per reported label, the (truth, scores) that its average precision, ROC-AUC and
    precision-recall curve are computed from, so that a plot shows what the table says.

    Multi-label: every image and the label's score. Single-label: the label's own score
    (not only where it wins, as a tag needs); images not judged at its depth count as
    negatives scored 0.
    """
    if scored.taxonomy.mode != "single":
        return {scored.names[i]: (scored.truth[:, i], scored.scores[:, i])
                for i, label in enumerate(scored.taxonomy.labels) if not label.background}
    return {scored.names[i]: ((true_at == i) & eligible, _judged_scores(scored, i, eligible))
            for _, members, eligible, true_at in _depths(scored) for i in members}


def _label_at_depth(marks: np.ndarray, members: list[int]) -> np.ndarray:
    """Per image, the index of the marked label among ``members`` (one depth), or -1."""
    sub = marks[:, members]
    out = np.full(marks.shape[0], -1)
    rows = sub.any(axis=1)
    out[rows] = np.asarray(members)[sub[rows].argmax(axis=1)]
    return out


# -- multi-label ----------------------------------------------------------------------------


def multi_label(scored: ScoredDataset, boot: Bootstrap) -> tuple[list[LabelMetrics], Averages]:
    return multi_label_figures(scored, boot)()


def multi_label_figures(scored: ScoredDataset, boot: Bootstrap) -> Callable[[], tuple[list[LabelMetrics], Averages]]:
    """Register every label's figures and the micro averages; returns what builds them (and the macro averages)."""
    taxonomy = scored.taxonomy
    reported = [i for i, label in enumerate(taxonomy.labels) if not label.background]
    truth, predicted = scored.truth[:, reported], scored.predicted()[:, reported]
    figures = [label_figures(boot, scored.names[i], taxonomy.threshold_of(taxonomy.labels[i]),
                             truth[:, column], predicted[:, column], scored.scores[:, i])
               for column, i in enumerate(reported)]
    hits, positives, given = (truth & predicted).sum(axis=1), truth.sum(axis=1), predicted.sum(axis=1)
    micro_p, micro_r = boot.figure(hits, given), boot.figure(hits, positives)
    micro_f1 = boot.figure(2 * hits, positives + given)
    with_positives = [c for c in range(len(reported)) if truth[:, c].any()]
    # micro AP: every (image, label) pair pooled
    micro_ap = average_precision(truth, scored.scores[:, reported]) if truth.any() else None

    def build() -> tuple[list[LabelMetrics], Averages]:
        labels = [f.build() for f in figures]
        macro = {}
        for figure in ("precision", "recall", "f1"):
            values = [getattr(labels[c], figure).value for c in with_positives]
            values = [v for v in values if v is not None]
            stacked = (np.stack([getattr(figures[c], figure).samples() for c in with_positives]) if with_positives
                       else np.full((1, boot.rounds), np.nan))
            with warnings.catch_warnings():  # "mean of empty slice" where no label is defined in a resample
                warnings.simplefilter("ignore", RuntimeWarning)
                resampled = np.nanmean(stacked, axis=0)
            macro[figure] = _estimate(float(np.mean(values)) if values else None, resampled, len(with_positives))
        aps = [labels[c].average_precision for c in with_positives if labels[c].average_precision is not None]
        aucs = [labels[c].roc_auc for c in with_positives if labels[c].roc_auc is not None]
        averages = Averages(
            micro_precision=micro_p.estimate(), micro_recall=micro_r.estimate(), micro_f1=micro_f1.estimate(),
            macro_precision=macro["precision"], macro_recall=macro["recall"], macro_f1=macro["f1"],
            micro_average_precision=micro_ap,
            macro_average_precision=float(np.mean(aps)) if aps else None,
            macro_roc_auc=float(np.mean(aucs)) if aucs else None,
        )
        return labels, averages

    return build


# -- moderation ----------------------------------------------------------------------------


def true_actions(scored: ScoredDataset) -> np.ndarray:
    """Per image, the severity of the strictest action among its true labels (0 = allow)."""
    severity = np.array([ACTION_SEVERITY[label.action or "allow"] for label in scored.taxonomy.labels])
    return np.where(scored.truth, severity[None, :], 0).max(axis=1) if scored.truth.size else np.zeros(len(scored.items), int)


def verdict_metrics(scored: ScoredDataset, boot: Bootstrap) -> VerdictMetrics:
    return verdict_figures(scored, boot)()


def verdict_figures(scored: ScoredDataset, boot: Bootstrap) -> Callable[[], VerdictMetrics]:
    truth = true_actions(scored)
    got = np.array([ACTION_SEVERITY[v or "allow"] for v in scored.verdicts], dtype=int)
    table = np.zeros((3, 3), dtype=int)
    np.add.at(table, (truth, got), 1)
    block, review, allow = truth == 2, truth == 1, truth == 0
    accuracy = boot.figure(truth == got, np.ones_like(truth, bool))
    misses = boot.figure(block & (got == 0), block)
    review_misses = boot.figure(review & (got == 0), review)
    false_alarms = boot.figure(allow & (got > 0), allow)
    return lambda: VerdictMetrics(
        actions=ACTIONS, table=table.tolist(), accuracy=accuracy.estimate(), misses=misses.estimate(),
        review_misses=review_misses.estimate(), false_alarms=false_alarms.estimate(),
    )
