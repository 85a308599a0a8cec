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
over the resamples in which it is defined.

The figures follow scikit-learn's definitions exactly (the tests compare every one of
them with scikit-learn's own functions) but are computed here with numpy: they are counts
and one sort each, and importing ``sklearn.metrics`` takes 1.5 s, more than everything
else a fully cached evaluation of 1,000 images does.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..taxonomy import ACTION_SEVERITY
from .models import Averages, ConfusedPair, Estimate, LabelMetrics, LevelMetrics, VerdictMetrics
from .scored import ScoredDataset

NONE = "(none)"
ACTIONS = list(ACTION_SEVERITY)  # allow, review, block
TOP_K = 5
MOST_CONFUSED = 10


class Bootstrap:
    """Resamples of ``n`` images, shared by every figure of one report."""

    def __init__(self, n: int, rounds: int = 1000, seed: int = 0):
        self.n, self.rounds = n, rounds
        rng = np.random.default_rng(seed)
        index = rng.integers(0, n, size=(rounds, n)) if n and rounds else np.zeros((0, n), np.int64)
        # counts[r, i]: how often image i is drawn in resample r, so that a resampled sum
        # is one product with the per-image values (no (rounds, n) copy per figure)
        flat = (index + n * np.arange(rounds)[:, None]).ravel()
        self.counts = np.bincount(flat, minlength=rounds * n).reshape(rounds, n).astype(np.float64)

    def ratio(self, numerator: np.ndarray, denominator: np.ndarray) -> tuple[Estimate, np.ndarray]:
        """sum(numerator) / sum(denominator) over images, with its interval and its resampled values.

        Per-image counts: for precision, true positives over predictions; for recall,
        true positives over positives; for accuracy, correct over eligible images.
        """
        num, den = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
        total = float(den.sum())
        return self.interval(float(num.sum()) / total if total else None, num, den)

    def interval(self, value: float | None, numerator: np.ndarray, denominator: np.ndarray) -> tuple[Estimate, np.ndarray]:
        """``value`` (computed elsewhere, e.g. by scikit-learn) with the interval of the ratio it is."""
        num, den = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
        samples = self._ratio_samples(num, den)
        return _estimate(value, samples, int(den.sum())), samples

    def _ratio_samples(self, num: np.ndarray, den: np.ndarray) -> np.ndarray:
        if not self.rounds or not self.n:
            return np.full(self.rounds, np.nan)
        # einsum, not BLAS: see zstagger.engine.vectors.similarity
        nums, dens = np.einsum("rn,n->r", self.counts, num), np.einsum("rn,n->r", self.counts, den)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(dens > 0, nums / np.where(dens > 0, dens, 1), np.nan)


def _estimate(value: float | None, samples: np.ndarray, n: int) -> Estimate:
    finite = samples[np.isfinite(samples)]
    if value is None or finite.size < max(10, 0.5 * samples.size):
        return Estimate(value=value, n=n)  # too rarely defined to give an honest interval
    low, high = np.percentile(finite, [2.5, 97.5])
    return Estimate(value=value, low=float(low), high=float(high), n=n)


def precision_recall_curve(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recall (rising from 0) and precision at each distinct score, highest first, where recall
    rises: the precision-recall curve whose area, precision at each step times the recall gained
    there, is :func:`average_precision` (scikit-learn's ``precision_recall_curve`` points)."""
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # the last image at each distinct score
    tp = np.cumsum(t)[last]
    precision, recall = tp / (last + 1), tp / t.sum()
    gains = np.diff(np.r_[0.0, recall]) > 0  # a step that adds no recall adds no area
    return np.r_[0.0, recall[gains]], np.r_[1.0, precision[gains]]


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


def label_metrics(boot: Bootstrap, name: str, threshold: float, truth: np.ndarray, predicted: np.ndarray,
                  scores: np.ndarray | None) -> tuple[LabelMetrics, dict[str, np.ndarray]]:
    """One label's figures from boolean truth/prediction vectors (and its scores, for AP and ROC-AUC)."""
    hit = truth & predicted
    precision = boot.ratio(hit, predicted)
    recall = boot.ratio(hit, truth)
    f1 = boot.ratio(2 * hit, truth.astype(int) + predicted)  # 2TP / (2TP + FP + FN)
    ap = auc = None
    if scores is not None and truth.any():
        ap = average_precision(truth, scores)
        if not truth.all():
            auc = roc_auc(truth, scores)
    metrics = LabelMetrics(
        label=name, threshold=threshold, support=int(truth.sum()), predicted=int(predicted.sum()),
        precision=precision[0], recall=recall[0], f1=f1[0].model_copy(update={"n": int(truth.sum())}),
        average_precision=ap, roc_auc=auc,
    )
    return metrics, {"precision": precision[1], "recall": recall[1], "f1": f1[1]}


# -- single-label ---------------------------------------------------------------------------


def single_label_levels(scored: ScoredDataset, boot: Bootstrap) -> list[LevelMetrics]:
    taxonomy = scored.taxonomy
    names = scored.names
    predicted = scored.predicted()
    levels = []
    for d, members, eligible, true_at in _depths(scored):
        pred_at = _label_at_depth(predicted, members)
        classes = [names[i] for i in members] + [NONE]
        y_true = np.array([names[i] if i >= 0 else NONE for i in true_at], dtype=object)
        y_pred = np.array([names[i] if i >= 0 else NONE for i in pred_at], dtype=object)
        accuracy, _ = boot.ratio((y_true == y_pred) & eligible, eligible)
        # top-k: the true label among the k best-scored labels of this depth (images with a true label here)
        k = min(TOP_K, len(members))
        ranked = np.argsort(-scored.scores[:, members], axis=1, kind="stable")
        has_truth = true_at >= 0
        rank_of_truth = np.full(len(true_at), len(members))
        for row in np.flatnonzero(has_truth):
            rank_of_truth[row] = int(np.flatnonzero(np.asarray(members)[ranked[row]] == true_at[row])[0])
        top1, _ = boot.ratio(has_truth & (rank_of_truth < 1), has_truth)
        topk, _ = boot.ratio(has_truth & (rank_of_truth < k), has_truth)
        labels = []
        for i in members:
            t, p = (y_true == names[i]) & eligible, (y_pred == names[i]) & eligible
            labels.append(label_metrics(boot, names[i], taxonomy.threshold_of(taxonomy.labels[i]), t, p,
                                        _judged_scores(scored, i, eligible))[0])
        matrix = confusion(y_true[eligible], y_pred[eligible], classes)
        pairs = [
            ConfusedPair(true=classes[a], predicted=classes[b], count=int(matrix[a, b]))
            for a, b in zip(*np.nonzero(matrix)) if a != b
        ]
        pairs.sort(key=lambda pair: (-pair.count, pair.true, pair.predicted))
        levels.append(LevelMetrics(
            depth=d, images=int(eligible.sum()), top1=top1, top5=topk, top_k=k, accuracy=accuracy, labels=labels,
            confusion_labels=classes, confusion=matrix.tolist(), most_confused=pairs[:MOST_CONFUSED],
        ))
    return levels


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
    taxonomy = scored.taxonomy
    reported = [i for i, label in enumerate(taxonomy.labels) if not label.background]
    truth, predicted, scores = scored.truth[:, reported], scored.predicted()[:, reported], scored.scores[:, reported]
    labels, samples = [], []
    for column, i in enumerate(reported):
        metrics, resampled = label_metrics(boot, scored.names[i], taxonomy.threshold_of(taxonomy.labels[i]),
                                           truth[:, column], predicted[:, column], scores[:, column])
        labels.append(metrics)
        samples.append(resampled)
    hits = (truth & predicted).sum(axis=1)
    micro_p, micro_r = boot.ratio(hits, predicted.sum(axis=1)), boot.ratio(hits, truth.sum(axis=1))
    micro_f1 = boot.ratio(2 * hits, truth.sum(axis=1) + predicted.sum(axis=1))
    with_positives = [c for c in range(len(reported)) if truth[:, c].any()]
    macro = {}
    for figure in ("precision", "recall", "f1"):
        values = [getattr(labels[c], figure).value for c in with_positives]
        values = [v for v in values if v is not None]
        stacked = np.stack([samples[c][figure] for c in with_positives]) if with_positives else np.full((1, boot.rounds), np.nan)
        with warnings.catch_warnings():  # "mean of empty slice" where no label is defined in a resample
            warnings.simplefilter("ignore", RuntimeWarning)
            resampled = np.nanmean(stacked, axis=0)
        macro[figure] = (_estimate(float(np.mean(values)) if values else None, resampled, len(with_positives)), resampled)
    micro_ap = average_precision(truth.ravel(), scores.ravel()) if truth.any() else None
    aps = [labels[c].average_precision for c in with_positives if labels[c].average_precision is not None]
    aucs = [labels[c].roc_auc for c in with_positives if labels[c].roc_auc is not None]
    averages = Averages(
        micro_precision=micro_p[0], micro_recall=micro_r[0], micro_f1=micro_f1[0],
        macro_precision=macro["precision"][0], macro_recall=macro["recall"][0], macro_f1=macro["f1"][0],
        micro_average_precision=micro_ap,
        macro_average_precision=float(np.mean(aps)) if aps else None,
        macro_roc_auc=float(np.mean(aucs)) if aucs else None,
    )
    return labels, averages


# -- moderation ----------------------------------------------------------------------------


def true_actions(scored: ScoredDataset) -> np.ndarray:
    """Per image, the severity of the strictest action among its true labels (0 = allow)."""
    severity = np.array([ACTION_SEVERITY[label.action or "allow"] for label in scored.taxonomy.labels])
    return np.where(scored.truth, severity[None, :], 0).max(axis=1) if scored.truth.size else np.zeros(len(scored.items), int)


def verdict_metrics(scored: ScoredDataset, boot: Bootstrap) -> VerdictMetrics:
    truth = true_actions(scored)
    got = np.array([ACTION_SEVERITY[v or "allow"] for v in scored.verdicts], dtype=int)
    table = np.zeros((3, 3), dtype=int)
    np.add.at(table, (truth, got), 1)
    block, review, allow = truth == 2, truth == 1, truth == 0
    return VerdictMetrics(
        actions=ACTIONS, table=table.tolist(),
        accuracy=boot.ratio(truth == got, np.ones_like(truth, bool))[0],
        misses=boot.ratio(block & (got == 0), block)[0],
        review_misses=boot.ratio(review & (got == 0), review)[0],
        false_alarms=boot.ratio(allow & (got > 0), allow)[0],
    )
