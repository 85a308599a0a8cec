"""Few-shot maths: example images combined with text prototypes, and known-image matching. Pure numpy.

Every prototype a taxonomy scores against (a label, a negative phrase, a background label,
a label's counter-examples) has a text embedding and, optionally, an *image set*: the unit
embeddings of its example images. Two documented ways to combine them
(``few_shot.method`` in a taxonomy):

``prototype`` (the default)
    The prototype is a blend of its normalised text embedding and its set's centroid,
    ``normalize((1 - w) * normalize(text) + w * centroid)`` with
    ``centroid = normalize(mean(normalize(examples)))`` and ``w = few_shot.weight``.
    Scoring then runs unchanged on the blended prototypes, so it costs nothing per image.
``cache``
    Tip-Adapter's training-free cache (Zhang et al., 2022): each prototype's logit gains
    ``logit_scale * alpha * mean_k exp(-beta * (1 - cos(image, example_k)))`` over its
    set's examples. The mean (Tip-Adapter sums over K examples per class) keeps labels
    with many examples from outweighing labels with few.

Prototypes without an image set take the *neutral* value: the normalised mean of every
set's centroid (``prototype``), or the mean of every set's affinity (``cache``). Image-image
cosines are far larger than image-text ones (0.5-0.9 against 0.2-0.3 for CLIP), so giving
image evidence to some prototypes and none to others would lift those above the rest for
every image; with the neutral value every prototype gets the same lift, and only an image
closer to one set than to the average of them moves the scores.

Known-image matching is brute force: the best cosine of each image to each label's known
images, one matrix product (BLAS) per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .scoring import normalize

NEUTRAL = -1  # the image-set index of a prototype that has no examples


def centroid(vectors: np.ndarray) -> np.ndarray:
    """The unit mean of unit-normalised rows: one image set's direction."""
    return normalize(normalize(np.asarray(vectors, dtype=np.float32)).mean(axis=0))


def centroids(sets: Sequence[np.ndarray]) -> np.ndarray:
    """(S, D): the centroid of each image set."""
    return np.stack([centroid(s) for s in sets]).astype(np.float32)


def neutral_centroid(set_centroids: np.ndarray) -> np.ndarray:
    """The direction a prototype without examples takes: the unit mean of every set's centroid."""
    return normalize(np.asarray(set_centroids, dtype=np.float32).mean(axis=0))


def blend_prototypes(text: np.ndarray, set_index: Sequence[int], sets: Sequence[np.ndarray], weight: float) -> np.ndarray:
    """``normalize((1 - w) * normalize(text_j) + w * centroid_j)`` for every prototype j.

    ``set_index[j]`` is the image set of prototype j, or :data:`NEUTRAL` for the neutral
    centroid. Without any set the text embeddings come back (normalised) unchanged.
    """
    text = normalize(np.asarray(text, dtype=np.float32))
    if not sets:
        return text
    cents = centroids(sets)
    image = np.concatenate([cents, neutral_centroid(cents)[None, :]])  # row -1: neutral
    rows = image[np.asarray(set_index, dtype=np.int64)]
    return normalize((1.0 - weight) * text + weight * rows)


def large_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b.T`` through BLAS, for a matrix with many rows (examples, known images).

    :func:`~zstagger.engine.scoring.similarity` avoids BLAS for the small matrices of label
    scoring; against thousands of rows BLAS is 5-10x faster than a single-threaded einsum.
    """
    return np.matmul(np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32).T)


def averaging_matrix(owner: np.ndarray, n_sets: int) -> np.ndarray:
    """(E, S): column s holds 1/|s| at the rows of set s, so ``values @ matrix`` averages per set."""
    owner = np.asarray(owner, dtype=np.int64)
    matrix = np.zeros((len(owner), n_sets), dtype=np.float32)
    matrix[np.arange(len(owner)), owner] = 1.0
    return matrix / np.maximum(matrix.sum(axis=0, keepdims=True), 1.0)


def set_affinities(images: np.ndarray, examples: np.ndarray, averaging: np.ndarray, beta: float) -> np.ndarray:
    """(B, S): for each image and set, the mean over the set's examples of ``exp(-beta * (1 - cos))``.

    ``averaging`` is :func:`averaging_matrix` of the examples' set indices.
    """
    return np.exp(-beta * (1.0 - large_similarity(images, examples))) @ averaging


@dataclass
class AffinityCache:
    """The ``cache`` method's state: every example of every set, and which set each prototype uses."""

    examples: np.ndarray  # (E, D) unit rows
    averaging: np.ndarray  # (E, S): averaging_matrix of each example's set
    label_sets: np.ndarray  # (L,) set index per label, NEUTRAL for none
    competitor_sets: np.ndarray  # (N,) set index per competitor (contrastive rule), NEUTRAL for none
    alpha: float
    beta: float

    @classmethod
    def build(cls, sets: Sequence[np.ndarray], label_sets: Sequence[int], competitor_sets: Sequence[int],
              alpha: float, beta: float) -> AffinityCache:
        examples = normalize(np.concatenate([np.asarray(s, dtype=np.float32) for s in sets]))
        owner = np.concatenate([np.full(len(s), i, dtype=np.int64) for i, s in enumerate(sets)])
        return cls(examples, averaging_matrix(owner, len(sets)), np.asarray(label_sets, dtype=np.int64),
                   np.asarray(competitor_sets, dtype=np.int64), alpha, beta)

    def extra_logits(self, images: np.ndarray, logit_scale: float) -> tuple[np.ndarray, np.ndarray]:
        """What the cache adds to the labels' logits (B, L) and to the competitors' (B, N)."""
        per_set = set_affinities(images, self.examples, self.averaging, self.beta)
        table = np.concatenate([per_set, per_set.mean(axis=1, keepdims=True)], axis=1)  # column -1: neutral
        scale = np.float32(logit_scale * self.alpha)
        return scale * table[:, self.label_sets], scale * table[:, self.competitor_sets]


def best_matches(images: np.ndarray, known: np.ndarray, bounds: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """For each image and each range ``[start, stop)`` of ``known`` rows: the row that is
    closest (cosine) and that cosine. Returns ``(rows, cosines)``, both (B, len(bounds))."""
    images = np.asarray(images, dtype=np.float32)
    rows = np.zeros((images.shape[0], len(bounds)), dtype=np.int64)
    best = np.full((images.shape[0], len(bounds)), -np.inf, dtype=np.float32)
    if images.shape[0] == 0 or not bounds:
        return rows, best
    cos = large_similarity(images, known)
    picks = np.arange(images.shape[0])
    for j, (start, stop) in enumerate(bounds):
        if stop > start:
            at = np.argmax(cos[:, start:stop], axis=1)
            rows[:, j] = start + at
            best[:, j] = cos[picks, start + at]
    return rows, best
