"""From per-frame scores to one judgement: aggregation per label, and segments in time.

Pure functions over a (frames x labels) score matrix. :func:`aggregate` makes the media's
one row of scores (the taxonomy's ``media`` policy: the ``min_frames``-th highest frame
score per label, or the mean of the ``top_k`` highest), which the taxonomy's classifier
then thresholds exactly as it does a still's. :func:`segments` groups the frames where a
label fired into contiguous stretches (consecutive sampled frames) with start, end and peak.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def aggregate(scores: np.ndarray, cosines: np.ndarray, method: str = "max", min_frames: int = 1,
              top_k: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One row of scores and cosines from (F, L) frame scores, and the (F, L) weights that made it.

    ``max``: per label, its ``min_frames``-th highest frame score (1: the highest), and that
    frame's cosine; fewer frames than ``min_frames``: the lowest. ``mean_top_k``: the mean of
    its ``top_k`` highest frame scores and of those frames' cosines.
    """
    scores, cosines = np.asarray(scores, dtype=np.float64), np.asarray(cosines, dtype=np.float64)
    frames = scores.shape[0]
    if frames == 0:
        raise ValueError("no frames to aggregate")
    order = np.argsort(-scores, axis=0, kind="stable")  # per label, frames best first
    weights = np.zeros_like(scores)
    columns = np.arange(scores.shape[1])
    if method == "max":
        rank = min(min_frames, frames) - 1
        weights[order[rank], columns] = 1.0
    elif method == "mean_top_k":
        k = min(top_k, frames)
        for r in range(k):
            weights[order[r], columns] = 1.0 / k
    else:
        raise ValueError(f"unknown aggregation {method!r}")
    return (weights * scores).sum(axis=0), (weights * cosines).sum(axis=0), weights


def matched_frames(matched: np.ndarray, min_frames: int = 1) -> np.ndarray:
    """(L,) bool: labels a known image matched on at least ``min_frames`` frames."""
    return np.asarray(matched, dtype=bool).sum(axis=0) >= min_frames


def best_match_rows(match_rows: np.ndarray, match_cosines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per known-image label (columns), the closest known image over all frames: (1, K) rows and cosines."""
    if match_cosines.shape[1] == 0:
        return match_rows[:1], match_cosines[:1]
    best = np.argmax(match_cosines, axis=0)
    columns = np.arange(match_cosines.shape[1])
    return match_rows[best, columns][None, :], match_cosines[best, columns][None, :]


def segments(times: Sequence[float], fired: np.ndarray, scores: np.ndarray, names: Sequence[str],
             labels: Sequence[int] | None = None) -> list[dict]:
    """One entry per contiguous stretch of sampled frames on which a label fired:
    ``{label, start, end, peak_score, peak_time}`` (seconds), by start time, then label order.

    ``fired`` (F, L) bool, ``scores`` (F, L), ``times`` (F,) ascending; ``labels``: the columns
    to report (default all)."""
    fired = np.asarray(fired, dtype=bool)
    out = []
    for label in (range(fired.shape[1]) if labels is None else labels):
        column = fired[:, label]
        if not column.any():
            continue
        padded = np.concatenate([[False], column, [False]])
        edges = np.flatnonzero(padded[1:] != padded[:-1])
        for first, end in zip(edges[0::2], edges[1::2]):
            peak = first + int(np.argmax(scores[first:end, label]))
            out.append({"label": names[label], "start": float(times[first]), "end": float(times[end - 1]),
                        "peak_score": float(scores[peak, label]), "peak_time": float(times[peak])})
    return sorted(out, key=lambda s: s["start"])
