"""Thresholds from a sample of reviewed items, through a fitted chance of being right at each score. Pure.

Counting (:func:`.calibrate.choose_threshold` with weights) estimates a threshold's
precision from the reviewed items above it, each standing for 1 / its inclusion
probability. Above the uncertainty band only the audit sample lands, a handful of items
standing for hundreds each, so that count swings by many points between samples.

The estimate here is model-assisted: a logistic curve P(label true | score) (Platt
scaling) is fitted on the reviewed items, and a threshold's precision is the mean of that
curve over every item at or above it, each item standing for its weight (the reviewed
items by 1 / inclusion probability, or every scored item once where their scores are
known). Each reviewed item informs the whole curve, so items in the band tell about the
items above it.

The curve is fitted without the weights: an item's chance of being reviewed depends on the
scores alone (band or audit, then a hash), so among reviewed items with a given score the
share that is right is the same as among all items with that score; weighting would only
add variance. It assumes the share right rises with the score along a logistic curve;
``benchmarks/review_weighting.py`` measures both estimators against known truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .extra import require


@dataclass(frozen=True)
class CorrectnessCurve:
    """P(label true | score) = 1 / (1 + exp(-(intercept + slope * score)))."""

    intercept: float
    slope: float

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        z = self.intercept + self.slope * np.asarray(scores, dtype=np.float64)
        return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


def fit_correctness(scores: np.ndarray, truth: np.ndarray) -> CorrectnessCurve:
    """The logistic curve through (score, truth) pairs; a flat one where every item agrees."""
    truth = np.asarray(truth, dtype=bool)
    if truth.all() or not truth.any():
        return CorrectnessCurve(50.0 if truth.all() else -50.0, 0.0)
    linear_model = require("sklearn.linear_model")
    # nearly unpenalised: the penalty only keeps the slope finite when the classes separate
    model = linear_model.LogisticRegression(C=1e4, max_iter=1000)
    model.fit(np.asarray(scores, dtype=np.float64)[:, None], truth)
    return CorrectnessCurve(float(model.intercept_[0]), float(model.coef_[0, 0]))


def fitted_curves(curve: CorrectnessCurve, scores: np.ndarray, weights: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, precision, recall): at each distinct score (highest first), the expected
    precision and recall of firing at score >= it, over the items ``scores`` (each counted
    ``weights`` times)."""
    scores = np.asarray(scores, dtype=np.float64)
    w = np.ones(len(scores)) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    s, w = scores[order], w[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # last index of each distinct score
    right = np.cumsum(w * curve(s))
    fired = np.cumsum(w)
    return s[last], right[last] / fired[last], right[last] / max(right[-1], 1e-300)


def choose_threshold_fitted(scores: np.ndarray, truth: np.ndarray, target, weights: np.ndarray | None = None,
                            population: tuple[np.ndarray, np.ndarray | None] | None = None
                            ) -> tuple[float | None, float | None]:
    """(threshold, its estimated precision) meeting ``target`` (a :class:`.calibrate.Target`), or (None, None).

    The curve is fitted on the reviewed ``scores`` and ``truth``; the items it is averaged
    over are ``population`` (scores, weights) when given, else the reviewed items with
    ``weights``. Thresholds are scores of those items; a label fires at score >= threshold."""
    truth = np.asarray(truth, dtype=bool)
    if not truth.any() or len(scores) == 0:
        return None, None
    curve = fit_correctness(scores, truth)
    over, over_weights = population if population is not None else (scores, weights)
    thresholds, precision, recall = fitted_curves(curve, over, over_weights)
    if target.kind == "precision":
        ok = np.flatnonzero(precision >= target.value - 1e-12)
        pick = int(ok[-1]) if ok.size else None  # lowest threshold: most recall
    elif target.kind == "recall":
        ok = np.flatnonzero(recall >= target.value - 1e-12)
        pick = int(ok[np.argmax(precision[ok])]) if ok.size else None
    else:
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        pick = int(np.argmax(f1))
    if pick is None:
        return None, None
    return float(thresholds[pick]), float(precision[pick])
