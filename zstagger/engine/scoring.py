"""Zero-shot scoring math: pure functions on numpy arrays, no I/O and no torch.

Scoring needs no deep-learning framework, so a run whose image embeddings all come from
a cache scores without importing torch (which alone takes seconds to import).

A :class:`ScoringPlan` is built once per (model, taxonomy) from text embeddings and then
applied to every batch of image embeddings. Three scoring rules:

``softmax``
    Softmax of ``logit_scale * cosine`` within each group of competing labels. With one
    group and one template this is exactly the Hugging Face pipeline's CLIP score. Groups
    form a hierarchy: a child's score is P(parent) x P(child | parent, among siblings),
    so the scores of siblings sum to their parent's.
``contrastive``
    Multi-label scores for softmax-trained models (CLIP): each label against its own
    competitors (negative prompts, or background labels) as a softmax over
    ``[label, competitor_1, ...]``, reporting the label's share. Scores are independent
    across labels, lie in [0, 1], and 0.5 means "as close to the label as to its
    strongest alternative" whatever the model's scale, so one threshold reads the same
    for every label.
``sigmoid``
    Sigmoid-trained models (SigLIP): ``sigmoid(logit_scale * cosine + logit_bias)`` per
    label, the model's native calibrated probability and what the HF pipeline reports.

Unit vectors and their similarity live in :mod:`.vectors` (below both this module and
:mod:`.fewshot`, so neither imports the other at run time).

An input may bring text (a product title): :meth:`ScoringPlan.score_fused` scores it against
the same label embeddings and mixes it with the image, in logits or in scores.

Few-shot examples (:mod:`.fewshot`) either change the label and competitor embeddings
before a plan is built (``blend``) or add image evidence to the logits of every rule
(``centroid``, ``cache``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from .vectors import normalize, similarity

if TYPE_CHECKING:
    from .fewshot import ImageEvidence

ScoringRule = Literal["softmax", "contrastive", "sigmoid"]
FusionMethod = Literal["logit_mean", "prob_mean"]


def fuse(image: np.ndarray, text: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * image + weight * text``: an input's image and text sides, mixed."""
    return ((1.0 - weight) * image + weight * text).astype(np.float32)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a negative argument only, so large |x| neither overflows nor warns
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)


def grouped_logsumexp(x: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``log(sum(exp(...)))`` over consecutive column groups of (B, N) ``x``: group ``g`` is the
    ``counts[g]`` columns from ``starts[g]`` (every group non-empty). Returns (B, G)."""
    peak = np.maximum.reduceat(x, starts, axis=1)
    peak = np.where(np.isfinite(peak), peak, 0.0).astype(x.dtype)
    spread = np.exp(x - np.repeat(peak, counts, axis=1))
    return np.log(np.add.reduceat(spread, starts, axis=1)) + peak


def ensemble(prompt_embeds: np.ndarray, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """Prompt ensembling as in open_clip's ``build_zero_shot_classifier``.

    ``prompt_embeds`` are per-prompt embeddings; each group (the prompts of one label) is
    L2-normalised per prompt, averaged, and normalised again. Returns (len(groups), dim).
    """
    normed = normalize(np.asarray(prompt_embeds, dtype=np.float32))
    rows = [normed[list(g)].mean(axis=0) for g in groups]
    return normalize(np.stack(rows))


@dataclass(frozen=True)
class InputTexts:
    """The texts that came with some images of a batch (product titles): ``rows`` (K,) are the
    batch rows that have one, ``embeds`` (K, D) their unit text embeddings."""

    rows: np.ndarray
    embeds: np.ndarray

    @classmethod
    def every_row(cls, count: int, embed: np.ndarray) -> InputTexts:
        """One text for all ``count`` rows (a video's frames and its title)."""
        return cls(np.arange(count), np.repeat(np.asarray(embed, dtype=np.float32)[None, :], count, axis=0))


@dataclass
class ScoringPlan:
    """Everything needed to score image embeddings against one label set."""

    rule: ScoringRule
    label_embeds: np.ndarray  # (L, D), unit rows, float32
    logit_scale: float
    logit_bias: float | None = None
    # softmax: groups of label indices that compete, parents before children; parent = -1 at the root.
    groups: list[np.ndarray] = field(default_factory=list)
    group_parents: list[int] = field(default_factory=list)
    # contrastive: competitor embeddings and which label faces which (L, N).
    competitor_embeds: np.ndarray | None = None
    competitor_mask: np.ndarray | None = None
    # few-shot ``centroid`` and ``cache`` methods: logits from example images (labels and competitors)
    evidence: ImageEvidence | None = None

    def __post_init__(self) -> None:
        self.label_embeds = np.asarray(self.label_embeds, dtype=np.float32)
        if self.rule == "softmax" and not self.groups:
            self.groups = [np.arange(self.label_embeds.shape[0])]
            self.group_parents = [-1]
        self.groups = [np.asarray(g, dtype=np.int64) for g in self.groups]
        if self.rule == "contrastive":
            if self.competitor_embeds is None or self.competitor_mask is None:
                raise ValueError("contrastive scoring needs competitor embeddings and a mask")
            self.competitor_embeds = np.asarray(self.competitor_embeds, dtype=np.float32)
            self.competitor_mask = np.asarray(self.competitor_mask, dtype=bool)
            if not bool(self.competitor_mask.any(axis=1).all()):
                raise ValueError("every label needs at least one competitor for contrastive scoring")
            # Each label's competitors as one flat list of columns, label after label (a label faces
            # a few of them: looking at those only is an order of magnitude less work than the
            # whole (labels x competitors) grid).
            labels, columns = np.nonzero(self.competitor_mask)
            self._rival_columns = columns
            self._rival_starts = np.searchsorted(labels, np.arange(self.competitor_mask.shape[0]))
            self._rival_counts = np.diff(np.append(self._rival_starts, len(columns)))

    def score(self, image_embeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unit image embeddings (B, D) -> (scores, cosines), both (B, L) float32."""
        logits, competitor_logits, cosine = self.logits(image_embeds)
        return self.apply_rule(logits, competitor_logits), cosine

    def apply_rule(self, logits: np.ndarray, competitor_logits: np.ndarray | None) -> np.ndarray:
        """The scoring rule on logits as :meth:`logits` gives them: (B, L) scores."""
        if self.rule == "sigmoid":
            return sigmoid(logits + (self.logit_bias or 0.0))
        if self.rule == "softmax":
            return hierarchical_softmax(logits, self.groups, self.group_parents)
        # per label: logsumexp over its own competitors -> (B, L)
        rivals = grouped_logsumexp(competitor_logits[:, self._rival_columns], self._rival_starts, self._rival_counts)  # type: ignore[index]
        return sigmoid(logits - rivals)

    def text_logits(self, text_embeds: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The labels' and competitors' logits for unit *text* embeddings (an input's title):
        the same prompts, without image evidence (example images say nothing about a text)."""
        texts = np.asarray(text_embeds, dtype=np.float32)
        logits = self.logit_scale * similarity(texts, self.label_embeds)
        if self.rule != "contrastive":
            return logits, None
        return logits, self.logit_scale * similarity(texts, self.competitor_embeds)  # type: ignore[arg-type]

    def score_fused(self, image_embeds: np.ndarray, text_embeds: np.ndarray, method: FusionMethod,
                    weight: float) -> tuple[np.ndarray, np.ndarray]:
        """Images (B, D) each with its text (B, D) -> (scores, the images' cosines): ``logit_mean``
        applies the rule to the weighted mean of both sides' logits, ``prob_mean`` mixes the
        scores of each side scored alone (see :func:`fuse`)."""
        logits, competitor_logits, cosine = self.logits(image_embeds)
        text, text_competitors = self.text_logits(text_embeds)
        if method == "logit_mean":
            mixed = None if competitor_logits is None else fuse(competitor_logits, text_competitors, weight)
            return self.apply_rule(fuse(logits, text, weight), mixed), cosine
        return fuse(self.apply_rule(logits, competitor_logits), self.apply_rule(text, text_competitors), weight), cosine

    def logits(self, image_embeds: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """What the rule turns into scores: the labels' logits (B, L), the competitors' (B, N;
        contrastive only, else None) and the labels' cosines (B, L); image evidence included."""
        images = np.asarray(image_embeds, dtype=np.float32)
        cosine = similarity(images, self.label_embeds)
        text_scale = self.logit_scale * (self.evidence.text_weight if self.evidence is not None else 1.0)
        logits = text_scale * cosine
        extra_competitor = None
        if self.evidence is not None:
            extra_label, extra_competitor = self.evidence.extra_logits(images, self.logit_scale)
            logits = logits + extra_label
        if self.rule != "contrastive":
            return logits, None, cosine
        competitor_logits = text_scale * similarity(images, self.competitor_embeds)  # type: ignore[arg-type]
        if extra_competitor is not None:
            competitor_logits = competitor_logits + extra_competitor
        return logits, competitor_logits, cosine


def hierarchical_softmax(logits: np.ndarray, groups: Sequence[np.ndarray], parents: Sequence[int]) -> np.ndarray:
    """Softmax within each group, times the parent's score (groups ordered parents first)."""
    logits = np.asarray(logits, dtype=np.float32)
    scores = np.empty_like(logits)
    for members, parent in zip(groups, parents):
        members = np.asarray(members)
        probs = softmax(logits[:, members], axis=-1)
        scores[:, members] = probs if parent < 0 else probs * scores[:, parent : parent + 1]
    return scores
