"""Per-label thresholds chosen from labelled data for a target, with held-out estimates.

For each label, the threshold is the score at which the label's decision meets the
target on the dataset: the lowest threshold whose precision reaches ``--target-precision``
(the most recall at that precision), the highest whose recall reaches
``--target-recall`` (the most precision at that recall), or the one with the best F1.
What that procedure achieves on images it has not seen is estimated by k-fold
cross-validation: thresholds are chosen on k-1 folds and applied to the k-th, and the
pooled held-out predictions give precision and recall with bootstrap intervals.

A label with fewer than ``min_positives`` positives keeps its threshold (a threshold
fitted to a handful of images is noise); a target that no threshold reaches is reported
as unreachable and the threshold is kept, never faked.

Single-label taxonomies: a label can only become a tag where it beats its siblings, so
its "score" for calibration is its score where it is the best of its siblings and 0
elsewhere. Multi-label hierarchies are calibrated label by label (a child still fires
only with its parent).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from ..taxonomy import CalibratedLabel, Calibration, Taxonomy
from .extra import require
from .fitted import choose_threshold_fitted
from .metrics import Bootstrap, Figure
from .models import Estimate, LabelCalibrationResult
from .scored import ScoredDataset

MIN_POSITIVES = 10
ESTIMATORS = ("counted", "fitted")


@dataclass(frozen=True)
class Target:
    kind: str  # "precision", "recall" or "f1"
    value: float | None = None

    def __str__(self) -> str:
        return "max f1" if self.kind == "f1" else f"{self.kind}>={self.value:g}"


def choose_threshold(scores: np.ndarray, truth: np.ndarray, target: Target, weights: np.ndarray | None = None) -> float | None:
    """The threshold (one of the scores; a label fires at score >= threshold) meeting ``target``, or None.

    ``weights``: how many images each row stands for (inverse-probability weighting of a
    sample, e.g. reviewed items): precision and recall are then weighted sums."""
    if not truth.any():
        return None
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order].astype(np.int64)
    w = np.ones(len(s)) if weights is None else np.asarray(weights, dtype=np.float64)[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # last index of each distinct score
    tp = np.cumsum(t * w)[last]
    predicted = np.cumsum(w)[last]
    precision, recall = tp / predicted, tp / (t * w).sum()
    thresholds = s[last]
    if target.kind == "precision":
        ok = np.flatnonzero(precision >= target.value - 1e-12)
        return float(thresholds[ok[-1]]) if ok.size else None  # lowest threshold: most recall
    if target.kind == "recall":
        ok = np.flatnonzero(recall >= target.value - 1e-12)
        if not ok.size:
            return None
        best = ok[np.argmax(precision[ok])]  # first (highest threshold) among ties
        return float(thresholds[best])
    f1 = np.where(tp > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return float(thresholds[int(np.argmax(f1))]) if f1.max() > 0 else None


def calibration_scores(scored: ScoredDataset) -> np.ndarray:
    """(N, L): each label's score where it could become a tag (see the module docstring)."""
    if scored.taxonomy.mode != "single":
        return scored.scores
    out = np.zeros_like(scored.scores)
    only = scored.classifier.match_only  # matched by known images alone: their own score is their cosine
    out[:, only] = scored.scores[:, only]
    for members in scored.classifier.children.values():  # groups of siblings
        members = np.asarray(members)
        block = scored.scores[:, members]
        winner = block.argmax(axis=1)
        rows = np.arange(len(block))
        out[rows, members[winner]] = block[rows, winner]
    return out


FoldScorer = Callable[[np.ndarray], tuple[ScoredDataset, np.ndarray]]


def calibrate_scored(
    scored: ScoredDataset, target: Target, per_action: dict[str, float] | None = None, folds: int = 5,
    min_positives: int = MIN_POSITIVES, boot: Bootstrap | None = None, seed: int = 0, *,
    fold_scorer: FoldScorer | None = None, fitted: np.ndarray | None = None, estimator: str | None = None,
) -> tuple[list[LabelCalibrationResult], list[str]]:
    """Choose every label's threshold; returns the per-label results and warnings.

    ``fold_scorer(train_rows)``: the dataset scored by what was learnt from those rows
    alone, and the rows it learnt from (few-shot examples), which are left out of that
    fold's threshold choice; without it every fold uses ``scored``. ``fitted``: the rows
    ``scored``'s own thresholds may be chosen on (default: all). Images with a ``weight``
    (a manifest's, e.g. from ``zstagger review export``) are weighted in every threshold and
    figure (inverse-probability weighting: a sample of reviewed items stands for everything).
    ``estimator``: how a threshold's precision and recall are estimated when it is chosen:
    ``counted`` (the images above it) or ``fitted`` (:mod:`.fitted`: a curve P(true | score)
    fitted on the images, averaged over them); default: fitted for weighted images, else counted.
    """
    model_selection = require("sklearn.model_selection")
    taxonomy = scored.taxonomy
    boot = boot or Bootstrap(len(scored.items))
    scores = calibration_scores(scored)
    n = len(scored.items)
    weights = np.asarray([getattr(item, "weight", 1.0) for item in scored.items], dtype=np.float64)
    weighted = bool((weights != 1.0).any())
    w = weights if weighted else None
    estimator = estimator or ("fitted" if weighted else "counted")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, not {estimator!r}")

    def choose(label_scores: np.ndarray, label_truth: np.ndarray, goal: Target,
               label_weights: np.ndarray | None) -> tuple[float | None, float | None]:
        if estimator == "fitted":
            return choose_threshold_fitted(label_scores, label_truth, goal, label_weights)
        return choose_threshold(label_scores, label_truth, goal, label_weights), None
    fit = np.ones(n, dtype=bool) if fitted is None else np.asarray(fitted, dtype=bool)
    splits = list(model_selection.KFold(n_splits=folds, shuffle=True, random_state=seed).split(np.arange(n)))
    per_fold = []  # (train rows usable for thresholds, test rows, that fold's scores)
    for train, test in splits:
        if fold_scorer is None:
            per_fold.append((train, test, scores))
        else:
            fold, learnt_from = fold_scorer(train)
            per_fold.append((np.setdiff1d(train, learnt_from), test, calibration_scores(fold)))
    entries, few, unreachable = [], [], []  # (status, fields, figures); built once every figure is registered
    for i, label in enumerate(taxonomy.labels):
        if label.background:
            continue
        goal = Target("precision", per_action[label.action]) if per_action and label.action in per_action else target
        truth, column = scored.truth[:, i] & fit, np.where(fit, scores[:, i], -np.inf)
        previous = taxonomy.threshold_of(label)
        positives = int(truth.sum())
        in_sample = _figures(boot, column >= previous, truth, w)
        common = {"label": label.name, "action": label.action, "target": str(goal), "positives": positives,
                  "previous_threshold": previous}
        if positives < min_positives:
            few.append(label.name)
            entries.append(("too_few_positives", {
                **common, "threshold": previous, "fold_thresholds": [],
                "note": f"{positives} positives (< {min_positives}): threshold kept; its figures are measured, not fitted",
            }, {"in_sample": in_sample, "held_out": in_sample}))
            continue
        chosen, estimated = choose(column[fit], truth[fit], goal, None if w is None else w[fit])
        fold_thresholds: list[float | None] = []
        held_out = np.zeros(n, dtype=bool)
        for train, test, fold_scores in per_fold:
            t, _ = choose(fold_scores[train, i], scored.truth[train, i], goal, None if w is None else w[train])
            fold_thresholds.append(t)
            held_out[test] = fold_scores[test, i] >= (t if t is not None else previous)
        out = _figures(boot, held_out, scored.truth[:, i], w)
        if chosen is None:
            unreachable.append(label.name)
            best = _best_reachable(column[fit], truth[fit], goal)
            entries.append(("unreachable", {
                **common, "threshold": previous, "fold_thresholds": fold_thresholds,
                "note": f"no threshold reaches {goal} on this data ({best}); threshold kept",
            }, {"in_sample": in_sample, "held_out": out}))
            continue
        threshold = math.floor(chosen * 1e6) / 1e6
        entries.append(("calibrated", {**common, "threshold": threshold, "fold_thresholds": fold_thresholds,
                                       "estimated_precision": None if estimated is None else round(estimated, 4)},
                        {"in_sample": _figures(boot, column >= threshold, truth, w), "held_out": out}))
    results = [
        LabelCalibrationResult(
            **fields, status=status,
            in_sample_precision=figures["in_sample"][0].estimate(), in_sample_recall=figures["in_sample"][1].estimate(),
            held_out_precision=figures["held_out"][0].estimate(), held_out_recall=figures["held_out"][1].estimate(),
        )
        for status, fields, figures in entries
    ]
    warnings = []
    if weighted:
        warnings.append(f"images weighted by the manifest's weight column (total {weights.sum():.1f} for {n} images): "
                        "thresholds and figures are inverse-probability weighted"
                        + ("; thresholds chosen by a fitted P(true | score) (estimated_precision)" if estimator == "fitted" else ""))
    if few:
        warnings.append(f"too few positives (< {min_positives}) to calibrate, thresholds kept: {', '.join(few)}")
    if unreachable:
        warnings.append(f"target not reachable on this data, thresholds kept: {', '.join(unreachable)}")
    return results, warnings


def _figures(boot: Bootstrap, predicted: np.ndarray, truth: np.ndarray,
             weights: np.ndarray | None = None) -> tuple[Figure, Figure]:
    """Precision and recall, registered (resolved with every other figure of the calibration);
    with ``weights``, inverse-probability weighted."""
    hit = predicted & truth
    if weights is None:
        return boot.figure(hit, predicted), boot.figure(hit, truth)
    return boot.figure(hit * weights, predicted * weights), boot.figure(hit * weights, truth * weights)


def _best_reachable(scores: np.ndarray, truth: np.ndarray, target: Target) -> str:
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(truth[order])
    precision = tp / np.arange(1, len(tp) + 1)
    if target.kind == "precision":
        return f"best precision {precision.max():.3f}"
    return f"best recall {tp[-1] / max(1, truth.sum()):.3f}"


def calibrated_taxonomy(
    scored: ScoredDataset, results: list[LabelCalibrationResult], *, target: Target, per_action: dict[str, float],
    folds: int, model: str, model_fingerprint: str | None, preprocessing: str, dataset: str, dataset_fingerprint: str,
    name: str | None = None,
) -> Taxonomy:
    """The same taxonomy (labels, prompts) with the new thresholds, a bumped version and a calibration record."""
    source = scored.taxonomy
    by_label = {r.label: r for r in results}
    spec = source.model_dump(mode="json")
    for label in spec["labels"]:
        if label["name"] in by_label:
            key = "match_threshold" if source.label(label["name"]).match_only else "threshold"
            label[key] = by_label[label["name"]].threshold
    spec["name"] = name or (source.name if source.name.endswith("-calibrated") else f"{source.name}-calibrated")
    spec["version"] = bump_version(source.version)
    spec["calibration"] = Calibration(
        model=model, model_fingerprint=model_fingerprint, preprocessing=preprocessing, dataset=dataset,
        dataset_fingerprint=dataset_fingerprint, images=len(scored.items),
        date=datetime.now(timezone.utc).replace(microsecond=0).isoformat(), target=str(target),
        per_action=per_action, folds=folds, source=f"{source.name}@{source.version}",
        labels={
            r.label: CalibratedLabel(
                status=r.status, target=r.target, threshold=r.threshold, previous_threshold=r.previous_threshold,
                positives=r.positives, held_out_precision=_triple(r.held_out_precision), held_out_recall=_triple(r.held_out_recall),
            )
            for r in results
        },
    ).model_dump(mode="json")
    return Taxonomy.parse(spec, source="calibrated taxonomy")


def _triple(estimate: Estimate) -> list[float | None]:
    return [None if v is None else round(v, 4) for v in (estimate.value, estimate.low, estimate.high)]


def bump_version(version: str) -> str:
    """'1' -> '2', '1.0' -> '1.1', 'v2.3' -> 'v2.4'; anything else gets '.1' appended."""
    match = re.fullmatch(r"(.*?)(\d+)", version)
    return f"{match.group(1)}{int(match.group(2)) + 1}" if match else f"{version}.1"
