"""Thresholds learnt from reviewed items, with and without inverse-probability weights, against known truth.

    python benchmarks/review_weighting.py [--rounds 400] [--population 20000] [--target 0.9]

A synthetic population of scores with a known chance of being truly positive at each score
(P(y | s) = sigmoid(k (s - c))). Review picks, as ``zstagger review enqueue`` does, the
uncertainty band (every item with a score in [review, block)) and a random audit sample of
the rest, sized so that about 300 items are reviewed. On those items, the same code
``zstagger calibrate`` runs (:func:`zstagger.evaluation.calibrate.choose_threshold`) picks the
threshold for a precision target, once with weights 1 / inclusion probability and once
without; the precision each fit claims is then compared with the true precision of the
whole population at that threshold, and at the block threshold. Printed: the 95% range
(2.5th to 97.5th percentile over rounds) of each error, in points.
"""

from __future__ import annotations

import argparse

import numpy as np

from zstagger.evaluation.calibrate import Target, choose_threshold

REVIEW, BLOCK = 0.55, 0.75


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--population", type=int, default=20000)
    parser.add_argument("--reviewed", type=int, default=300, help="About how many items are reviewed per round.")
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    errors = {key: [] for key in ("weighted: claimed - true at its threshold", "unweighted: claimed - true at its threshold",
                                  "weighted: true at its threshold - target", "unweighted: true at its threshold - target")}
    sizes = []
    for _ in range(args.rounds):
        scores, truth = population(rng, args.population)
        band = (scores >= REVIEW) & (scores < BLOCK)
        band_rate = min(1.0, 0.7 * args.reviewed / max(band.sum(), 1))
        audit_rate = 0.3 * args.reviewed / max((~band).sum(), 1)
        probability = np.where(band, band_rate, audit_rate)
        chosen = rng.random(args.population) < probability
        sizes.append(int(chosen.sum()))
        s, t, w = scores[chosen], truth[chosen], 1 / probability[chosen]
        for name, weights in (("weighted", w), ("unweighted", None)):
            threshold = choose_threshold(s, t, Target("precision", args.target), weights)
            if threshold is None:
                continue
            claimed, true = precision(s, t, threshold, weights), precision(scores, truth, threshold)
            errors[f"{name}: claimed - true at its threshold"].append(100 * (claimed - true))
            errors[f"{name}: true at its threshold - target"].append(100 * (true - args.target))
    print(f"rounds {args.rounds}, population {args.population}, reviewed per round: median {int(np.median(sizes))} "
          f"(max {max(sizes)}), band [{REVIEW}, {BLOCK}), target precision {args.target}")
    print(f"{'points':46} {'mean':>7} {'2.5%':>7} {'97.5%':>7}  {'within +-3 (95%)':>16}")
    for key, values in errors.items():
        v = np.asarray(values)
        low, high = np.percentile(v, [2.5, 97.5])
        print(f"{key:46} {v.mean():7.2f} {low:7.2f} {high:7.2f}  {str(bool(low >= -3 and high <= 3)):>16}")


if __name__ == "__main__":
    main()
