"""Zero-shot scoring math: pure functions on tensors, no I/O.

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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

ScoringRule = Literal["softmax", "contrastive", "sigmoid"]


def ensemble(prompt_embeds: torch.Tensor, groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """Prompt ensembling as in open_clip's ``build_zero_shot_classifier``.

    ``prompt_embeds`` are per-prompt embeddings; each group (the prompts of one label) is
    L2-normalised per prompt, averaged, and normalised again. Returns (len(groups), dim).
    """
    normed = torch.nn.functional.normalize(prompt_embeds.float(), dim=-1)
    rows = [normed[list(g)].mean(dim=0) for g in groups]
    return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


@dataclass
class ScoringPlan:
    """Everything needed to score image embeddings against one label set."""

    rule: ScoringRule
    label_embeds: torch.Tensor  # (L, D), unit rows
    logit_scale: float
    logit_bias: float | None = None
    # softmax: groups of label indices that compete, parents before children; parent = -1 at the root.
    groups: list[torch.Tensor] = field(default_factory=list)
    group_parents: list[int] = field(default_factory=list)
    # contrastive: competitor embeddings and which label faces which (L, N).
    competitor_embeds: torch.Tensor | None = None
    competitor_mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.rule == "softmax" and not self.groups:
            self.groups = [torch.arange(self.label_embeds.shape[0])]
            self.group_parents = [-1]
        if self.rule == "contrastive":
            if self.competitor_embeds is None or self.competitor_mask is None:
                raise ValueError("contrastive scoring needs competitor embeddings and a mask")
            if not bool(self.competitor_mask.any(dim=1).all()):
                raise ValueError("every label needs at least one competitor for contrastive scoring")
            # log(mask): 0 where a competitor applies, -inf where it does not.
            self._log_mask = torch.zeros(self.competitor_mask.shape).masked_fill(~self.competitor_mask, float("-inf"))

    def score(self, image_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit image embeddings (B, D) -> (scores, cosines), both (B, L) float32."""
        cosine = image_embeds.float() @ self.label_embeds.T
        logits = self.logit_scale * cosine
        if self.rule == "sigmoid":
            return torch.sigmoid(logits + (self.logit_bias or 0.0)), cosine
        if self.rule == "softmax":
            return hierarchical_softmax(logits, self.groups, self.group_parents), cosine
        competitor_logits = self.logit_scale * (image_embeds.float() @ self.competitor_embeds.T)  # type: ignore[union-attr]
        # per label: logsumexp over its own competitors, (B, 1, N) + (1, L, N) -> (B, L)
        rivals = torch.logsumexp(competitor_logits.unsqueeze(1) + self._log_mask.unsqueeze(0), dim=-1)
        return torch.sigmoid(logits - rivals), cosine


def hierarchical_softmax(logits: torch.Tensor, groups: Sequence[torch.Tensor], parents: Sequence[int]) -> torch.Tensor:
    """Softmax within each group, times the parent's score (groups ordered parents first)."""
    scores = torch.empty_like(logits)
    for members, parent in zip(groups, parents):
        probs = torch.softmax(logits[:, members], dim=-1)
        scores[:, members] = probs if parent < 0 else probs * scores[:, parent : parent + 1]
    return scores
