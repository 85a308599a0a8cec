"""Thresholds learnt from reviewed items against known truth: counted (with and without
inverse-probability weights) and fitted (model-assisted).

    python benchmarks/review_weighting.py [--rounds 400] [--population 20000] [--target 0.9]

A synthetic population of scores with a known chance of being truly positive at each score
(P(y | s) = sigmoid(k (s - c))). Review picks, as ``zstagger review enqueue`` does, the
uncertainty band (every item with a score in [review, block)) at one rate and the rest at
another (the audit), sized so that about 300 items are reviewed. Three designs, each on the
same populations and draws:

- ``audit``: 70% of the reviews in the band, 30% a uniform audit of everything else
  (``enqueue``'s default strata);
- ``audit+blocked``: 30% in the band, 60% among the items at or above the block threshold
  (``enqueue --blocked-rate``), 10% among those below the band;
- ``mostly blocked``: 20%, 75% and 5%.

On the reviewed items, four estimators pick the threshold for a precision target and claim
its precision: ``counted`` (what ``zstagger calibrate`` did before:
:func:`zstagger.evaluation.calibrate.choose_threshold`, weights 1 / inclusion probability),
``counted, unweighted`` (the same without weights), ``fitted`` (the default for weighted
calibrations now: :func:`zstagger.evaluation.fitted.choose_threshold_fitted`, averaged over
the reviewed items' weights) and ``fitted, all scores`` (averaged over every scored item:
their scores are known, only their truth is not). Each is compared with the true precision of
the whole population at its threshold, and each one's precision at the block threshold with
the true one there. Printed: the mean and the 95% range (2.5th to 97.5th percentile over
rounds) of each error, in points; ``ok`` when the range lies within +-3.
"""

from __future__ import annotations

import argparse

import numpy as np

from zstagger.evaluation.calibrate import Target, choose_threshold
from zstagger.evaluation.fitted import choose_threshold_fitted, fit_correctness, fitted_curves

REVIEW, BLOCK = 0.55, 0.75
DESIGNS = {"audit": (0.7, None, 0.3), "audit+blocked": (0.3, 0.6, 0.1),  # shares: band, at/above block, rest
           "mostly blocked": (0.2, 0.75, 0.05)}
ESTIMATORS = ("counted", "counted, unweighted", "fitted", "fitted, all scores")


def population(rng, n):
    """Mostly innocent images, a minority that look like the label; truth from a known curve."""
    flagged = rng.random(n) < 0.12
    scores = np.where(flagged, rng.beta(7, 3, n), rng.beta(2, 7, n))
    truth = rng.random(n) < 1 / (1 + np.exp(-14 * (scores - 0.62)))
    return scores, truth


def precision(scores, truth, threshold, weights=None):
    w = np.ones(len(scores)) if weights is None else weights
    fired = scores >= threshold
    return float((w * (fired & truth)).sum() / max((w * fired).sum(), 1e-12))


def inclusion(scores, design, reviewed):
    """Each item's chance of being reviewed under ``design``."""
    band_share, blocked_share, rest_share = DESIGNS[design]
    band, blocked = (scores >= REVIEW) & (scores < BLOCK), scores >= BLOCK
    rest = ~band if blocked_share is None else ~band & ~blocked
    p = np.where(band, min(1.0, band_share * reviewed / max(band.sum(), 1)), min(1.0, rest_share * reviewed / max(rest.sum(), 1)))
    if blocked_share is not None:
        p = np.where(blocked, min(1.0, blocked_share * reviewed / max(blocked.sum(), 1)), p)
    return p


def estimate(name, s, t, w, everything, target):
    """(threshold, claimed precision there, claimed precision at the block threshold) or None."""
    if name.startswith("counted"):
        weights = None if name.endswith("unweighted") else w
        threshold = choose_threshold(s, t, target, weights)
        if threshold is None:
            return None
        return threshold, precision(s, t, threshold, weights), precision(s, t, BLOCK, weights)
    over = (everything, None) if name.endswith("all scores") else (s, w)
    threshold, claimed = choose_threshold_fitted(s, t, target, w, population=over)
    if threshold is None:
        return None
    thresholds, curve, _ = fitted_curves(fit_correctness(s, t), *over)
    at_block = np.flatnonzero(thresholds >= BLOCK)
    return threshold, claimed, float(curve[at_block[-1]]) if at_block.size else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--population", type=int, default=20000)
    parser.add_argument("--reviewed", type=int, default=300, help="About how many items are reviewed per round.")
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    target = Target("precision", args.target)
    kinds = ("claimed - true at its threshold", "true at its threshold - target", "claimed - true at block")
    errors = {(d, e, k): [] for d in DESIGNS for e in ESTIMATORS for k in kinds}
    sizes = {d: [] for d in DESIGNS}
    for _ in range(args.rounds):
        scores, truth = population(rng, args.population)
        draw = rng.random(args.population)  # the same draw for both designs
        true_block = precision(scores, truth, BLOCK)
        for design in DESIGNS:
            probability = inclusion(scores, design, args.reviewed)
            chosen = draw < probability
            sizes[design].append(int(chosen.sum()))
            s, t, w = scores[chosen], truth[chosen], 1 / probability[chosen]
            for name in ESTIMATORS:
                found = estimate(name, s, t, w, scores, target)
                if found is None:
                    continue
                threshold, claimed, at_block = found
                true = precision(scores, truth, threshold)
                for kind, value in zip(kinds, (claimed - true, true - args.target, at_block - true_block)):
                    errors[(design, name, kind)].append(100 * value)
    print(f"rounds {args.rounds}, population {args.population}, band [{REVIEW}, {BLOCK}), target precision {args.target}")
    for design in DESIGNS:
        print(f"\n{design}: reviewed per round: median {int(np.median(sizes[design]))} (max {max(sizes[design])})")
        print(f"{'points':52} {'mean':>7} {'2.5%':>7} {'97.5%':>7} {'ok':>5} {'rounds':>6}")
        for name in ESTIMATORS:
            for kind in kinds:
                v = np.asarray(errors[(design, name, kind)])
                v = v[~np.isnan(v)]
                if not v.size:
                    continue
                low, high = np.percentile(v, [2.5, 97.5])
                print(f"{name + ': ' + kind:52} {v.mean():7.2f} {low:7.2f} {high:7.2f} {str(bool(low >= -3 and high <= 3)):>5} {v.size:6d}")


if __name__ == "__main__":
    main()
