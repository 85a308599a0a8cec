"""Few-shot maths: example images combined with text prototypes, and known-image matching. Pure numpy.

Every prototype a taxonomy scores against (a label, a negative phrase, a background label,
a label's counter-examples) has a text embedding and, optionally, an *image set*: the unit
embeddings of its example images. Three documented ways to combine them
(``few_shot.method`` in a taxonomy); ``x`` is an image's unit embedding, ``t`` a
prototype's text embedding, ``w`` is ``few_shot.weight``:

``blend`` (the default)
    The prototype embedding itself is blended: ``normalize((1 - w) * normalize(t) + w * c)``,
    ``c`` the unit mean of the set. A prototype without examples takes the unit mean of
    every set's ``c``: all prototypes then get the same lift from what images share, and an
    image far from every set leans to the prototypes without examples (the mean of unit
    vectors is shorter than they are), so labels without examples are not swept aside.
    Free at scoring time.
``centroid``
    ``logit = logit_scale * ((1 - w) * cos(x, t) + w * cos(x - mu, m - mu))``: the zero-shot
    logit blended with a nearest-centroid classifier on centred features, as SimpleShot
    (Wang et al., 2019) centres them: ``m`` is the mean of the set's unit embeddings and
    ``mu`` the mean of every set's ``m``. Centring removes what all images share (image-image
    cosines are 0.5-0.9 for CLIP whatever the content), so the image term is positive for an
    image like this set, negative for one like another, and on the scale of image-text
    cosines; a prototype without examples gets 0. Measured best where images show several
    things at once, but only for taxonomies where every competing label has examples: an
    image unlike every set is still more like one of them than like the mean of them all,
    so labels without examples lose every image to the labels with them.
``cache``
    Tip-Adapter's training-free cache (Zhang et al., 2022): ``logit += logit_scale * alpha *
    mean_k exp(-beta * (1 - cos(x, example_k)))`` over the set's examples (the mean, where
    Tip-Adapter sums K per class, so labels with many examples do not outweigh the rest);
    a prototype without examples gains the mean of that over every set. Like ``centroid``,
    for taxonomies where every competing label has examples.

Known-image matching is brute force: the best cosine of each image to each label's known
images, one matrix product (BLAS) per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .vectors import normalize, similarity

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

    :func:`~zstagger.engine.vectors.similarity` avoids BLAS for the small matrices of label
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


def set_means(sets: Sequence[np.ndarray]) -> np.ndarray:
    """(S, D): the mean of each set's unit-normalised rows (not normalised again)."""
    return np.stack([normalize(np.asarray(s, dtype=np.float32)).mean(axis=0) for s in sets]).astype(np.float32)


def centred_cosines(images: np.ndarray, means: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """(B, S): ``cos(x - mu, m_s - mu)`` for every image x and set mean m_s."""
    return similarity(normalize(np.asarray(images, dtype=np.float32) - mu), normalize(means - mu))


@dataclass
class ImageEvidence:
    """The ``centroid`` and ``cache`` methods: what image sets add to every prototype's logit.

    ``label_sets`` / ``competitor_sets``: each prototype's set index, :data:`NEUTRAL` for none.
    The text logits are multiplied by ``text_weight`` (``1 - w`` for ``centroid``, 1 for ``cache``).
    """

    method: str  # "centroid" or "cache"
    label_sets: np.ndarray
    competitor_sets: np.ndarray
    weight: float  # w (centroid) or alpha (cache), in cosine units
    text_weight: float
    means: np.ndarray | None = None  # centroid: (S, D) set means
    mu: np.ndarray | None = None  # centroid: the mean of the set means
    examples: np.ndarray | None = None  # cache: (E, D) unit rows
    averaging: np.ndarray | None = None  # cache: (E, S) averaging_matrix of each example's set
    beta: float = 5.5

    @classmethod
    def centroid(cls, sets: Sequence[np.ndarray], label_sets: Sequence[int], competitor_sets: Sequence[int],
                 weight: float) -> ImageEvidence:
        means = set_means(sets)
        return cls("centroid", np.asarray(label_sets, dtype=np.int64), np.asarray(competitor_sets, dtype=np.int64),
                   weight, 1.0 - weight, means=means, mu=means.mean(axis=0))

    @classmethod
    def cache(cls, sets: Sequence[np.ndarray], label_sets: Sequence[int], competitor_sets: Sequence[int],
              alpha: float, beta: float) -> ImageEvidence:
        examples = normalize(np.concatenate([np.asarray(s, dtype=np.float32) for s in sets]))
        owner = np.concatenate([np.full(len(s), i, dtype=np.int64) for i, s in enumerate(sets)])
        return cls("cache", np.asarray(label_sets, dtype=np.int64), np.asarray(competitor_sets, dtype=np.int64),
                   alpha, 1.0, examples=examples, averaging=averaging_matrix(owner, len(sets)), beta=beta)

    def per_set(self, images: np.ndarray) -> np.ndarray:
        """(B, S + 1): each set's value for each image; the last column is the neutral one."""
        if self.method == "centroid":
            values = centred_cosines(images, self.means, self.mu)  # type: ignore[arg-type]
            neutral = np.zeros((values.shape[0], 1), dtype=np.float32)
        else:
            values = set_affinities(images, self.examples, self.averaging, self.beta)  # type: ignore[arg-type]
            neutral = values.mean(axis=1, keepdims=True)
        return np.concatenate([values, neutral], axis=1)

    def extra_logits(self, images: np.ndarray, logit_scale: float) -> tuple[np.ndarray, np.ndarray]:
        """What the images add to the labels' logits (B, L) and to the competitors' (B, N)."""
        table = np.float32(logit_scale * self.weight) * self.per_set(images)
        return table[:, self.label_sets], table[:, self.competitor_sets]


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
