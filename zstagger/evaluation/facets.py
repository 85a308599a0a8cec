"""Facets on a labelled dataset: each facet's figures (eval) and its threshold (calibrate).

A facet is a single-label group (its values and a "not visible" outcome), so it is judged
as one: on the images whose manifest row gives the facet a true value (or null: not
visible / not applicable), the prediction is the facet's value, or null when the facet does
not apply to the image's category, the "not visible" outcome won, or the best value's score
is below the threshold. Figures: accuracy (null counts as a value), precision of the values
given, recall of the true values, coverage (share of images given a value). Calibration
chooses the facet's threshold on those images: the lowest reaching a target precision, or
the one with the best accuracy. Pure numpy over :class:`~zstagger.classifier.FacetOutcomes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..classifier import FacetClassifier, FacetOutcomes, TaxonomyClassifier
from .datasets import LabelledImage
from .models import Estimate, FacetCalibrationResult, FacetMetrics

if TYPE_CHECKING:
    from .metrics import Bootstrap  # metrics imports scored, which imports this module

NOT_JUDGED = -2  # the row gives no truth for the facet
NULL = -1  # the truth (or the prediction) is "no value"


@dataclass
class ScoredFacet:
    """One facet over a scored dataset: its outcomes and the truth (value index, NULL or NOT_JUDGED)."""

    facet: FacetClassifier
    outcomes: FacetOutcomes
    truth: np.ndarray  # (N,) int

    def predicted(self, threshold: float | None = None) -> np.ndarray:
        """(N,) int: the value index each image is given, NULL where none."""
        return np.where(self.facet.fired(self.outcomes, threshold), self.outcomes.best, NULL)


def facet_outcomes(compiled: TaxonomyClassifier, embeds: np.ndarray | None, tagged: list[list[int]],
                   stills: list[bool] | None = None) -> list[FacetOutcomes]:
    """Each facet's outcomes for a batch of images and their tags. ``stills``: which rows are
    stills (``embeds`` holds theirs alone, in order); an animation's or video's row has no
    facets (as when it is tagged): the facet does not apply there."""
    if stills is None or all(stills):
        mask = np.zeros((len(tagged), len(compiled.names)), dtype=bool)
        for row, tags in enumerate(tagged):
            mask[row, tags] = True
        return [facet.outcomes(embeds, mask) for facet in compiled.facets]
    rows = np.flatnonzero(np.asarray(stills, dtype=bool))
    found = facet_outcomes(compiled, embeds, [tagged[r] for r in rows]) if len(rows) else None
    out = []
    for f in range(len(compiled.facets)):
        whole = FacetOutcomes(np.zeros(len(tagged), bool), np.zeros(len(tagged), np.int64), np.zeros(len(tagged)),
                              np.zeros(len(tagged), bool))
        if found is not None:
            for key in ("applies", "best", "score", "wins"):
                getattr(whole, key)[rows] = getattr(found[f], key)
        out.append(whole)
    return out


def joined(parts: list[list[FacetOutcomes]], facets: int) -> list[FacetOutcomes]:
    """Batches of outcomes as one per facet."""
    if not parts:
        empty = FacetOutcomes(np.zeros(0, bool), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, bool))
        return [empty] * facets
    return [FacetOutcomes(*(np.concatenate([getattr(batch[f], key) for batch in parts])
                            for key in ("applies", "best", "score", "wins"))) for f in range(facets)]


def scored_facets(compiled: TaxonomyClassifier, outcomes: list[FacetOutcomes], items: list[LabelledImage]) -> list[ScoredFacet]:
    out = []
    for facet, found in zip(compiled.facets, outcomes):
        index = {name: i for i, name in enumerate(facet.value_names)}
        truth = np.full(len(items), NOT_JUDGED, dtype=np.int64)
        for row, item in enumerate(items):
            for name, value in item.facets:
                if name == facet.name:
                    truth[row] = NULL if value is None else index[value]
        out.append(ScoredFacet(facet, found, truth))
    return out


def facet_figures(scored: ScoredFacet, boot: Bootstrap, threshold: float | None = None) -> FacetMetrics:
    judged = scored.truth != NOT_JUDGED
    truth, predicted = scored.truth[judged], scored.predicted(threshold)[judged]
    right = predicted == truth
    given, true_value = predicted != NULL, truth != NULL
    rows = np.flatnonzero(judged)

    def rate(hit: np.ndarray, of: np.ndarray) -> Estimate:
        n = int(of.sum())
        if not n:
            return Estimate(value=None, n=0)
        value = float(hit[of].mean())
        low, high = _interval(boot, rows, hit & of, of)
        return Estimate(value=value, low=low, high=high, n=n)

    return FacetMetrics(
        facet=scored.facet.name, threshold=_threshold(scored, threshold), judged=int(judged.sum()),
        applies=int(scored.outcomes.applies[judged].sum()), accuracy=rate(right, np.ones(len(truth), bool)),
        precision=rate(right, given), recall=rate(right, true_value),
        coverage=float(given.mean()) if len(given) else 0.0,
    )


def _interval(boot: Bootstrap, rows: np.ndarray, hits: np.ndarray, of: np.ndarray):
    """A 95% bootstrap interval of hits / of over the judged rows (resampled as the dataset's images are)."""
    if boot.rounds <= 0 or not len(rows):
        return None, None
    rng = np.random.default_rng(boot.seed)
    block = max(1, (16 << 20) // (8 * len(rows)))  # resamples drawn at once: memory stays a few MB
    num, den = [], []
    for start in range(0, boot.rounds, block):
        draws = rng.integers(0, len(rows), size=(min(block, boot.rounds - start), len(rows)))
        num.append(hits[draws].sum(axis=1))
        den.append(of[draws].sum(axis=1))
    numerators, denominators = np.concatenate(num), np.concatenate(den)
    ratios = numerators[denominators > 0] / denominators[denominators > 0]
    if not len(ratios):
        return None, None
    return float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))


def _threshold(scored: ScoredFacet, threshold: float | None) -> float:
    if threshold is not None:
        return threshold
    return float(scored.facet.classifier.taxonomy.default_threshold)


def calibrate_facet(scored: ScoredFacet, target: str, value: float | None, boot: Bootstrap) -> FacetCalibrationResult:
    """The facet's threshold: the lowest whose precision reaches ``value`` (``target == "precision"``),
    else the one with the best accuracy (ties: the lowest). In-sample, on the judged images."""
    judged = scored.truth != NOT_JUDGED
    previous = _threshold(scored, None)
    if not judged.any():
        return FacetCalibrationResult(facet=scored.facet.name, status="not_judged", target=_target(target, value),
                                      previous_threshold=previous, threshold=previous, judged=0,
                                      figures=facet_figures(scored, boot))
    candidates = np.unique(np.concatenate([[0.0], scored.outcomes.score[judged & scored.outcomes.applies]]))
    truth = scored.truth[judged]
    best_t, best_key, status = previous, None, "unreachable"
    for t in candidates.tolist():
        predicted = scored.predicted(t)[judged]
        given = predicted != NULL
        right = predicted == truth
        if target == "precision":
            if given.any() and right[given].mean() >= value:  # type: ignore[operator]
                best_t, status = t, "calibrated"
                break
        else:
            key = float(right.mean())
            if best_key is None or key > best_key:
                best_t, best_key, status = t, key, "calibrated"
    return FacetCalibrationResult(facet=scored.facet.name, status=status, target=_target(target, value),
                                  previous_threshold=previous, threshold=float(best_t), judged=int(judged.sum()),
                                  figures=facet_figures(scored, boot, float(best_t)))


def _target(target: str, value: float | None) -> str:
    return f"precision>={value:g}" if target == "precision" else "max accuracy"
