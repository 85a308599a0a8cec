"""A taxonomy compiled against one model: text embeddings computed once, then reused.

:class:`TaxonomyClassifier` turns a :class:`~zstagger.taxonomy.Taxonomy` into an engine
:class:`~zstagger.engine.ScoringPlan` (prompt-ensembled label embeddings, competitor
structure, hierarchy) and turns scores into tags and a moderation verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .engine.scoring import ScoringPlan, ensemble
from .taxonomy import ACTION_SEVERITY, Taxonomy


@dataclass(frozen=True)
class Classification:
    """Scores for one image: (label, score, cosine) sorted best first, plus tags and verdict."""

    scores: list[tuple[str, float, float]]
    tags: list[str]
    verdict: str | None


class TaxonomyClassifier:
    def __init__(self, taxonomy: Taxonomy, plan: ScoringPlan):
        self.taxonomy = taxonomy
        self.plan = plan
        labels = taxonomy.labels
        self.names = [label.name for label in labels]
        self.thresholds = np.array([taxonomy.threshold_of(label) for label in labels], dtype=np.float64)
        self.background = np.array([label.background for label in labels], dtype=bool)
        self.parents = _parent_indices(taxonomy)
        self.severity = [ACTION_SEVERITY[label.action or "allow"] for label in labels]
        self.has_actions = taxonomy.has_actions
        depth = _depths(self.parents)
        self.order = sorted(range(len(labels)), key=lambda i: depth[i])
        self.children: dict[int, list[int]] = {}
        for i, parent in enumerate(self.parents):
            self.children.setdefault(parent, []).append(i)
        # Multi-label mode reports the labels that can be tags; background labels are only rivals.
        self.reported = [i for i in range(len(labels)) if taxonomy.mode == "single" or not labels[i].background]

    @classmethod
    def build(
        cls,
        taxonomy: Taxonomy,
        embed_texts: Callable[[Sequence[str]], np.ndarray],
        *,
        logit_scale: float,
        logit_bias: float | None = None,
        uses_sigmoid: bool = False,
    ) -> TaxonomyClassifier:
        """Embed every prompt of the taxonomy once (``embed_texts``) and build the plan."""
        labels = taxonomy.labels
        label_prompts = [taxonomy.prompts_for(label) for label in labels]
        negative_phrases = list(dict.fromkeys(n for label in labels for n in (label.negatives or taxonomy.negatives)))
        negative_prompts = [taxonomy.prompts_for(phrase) for phrase in negative_phrases]
        unique = list(dict.fromkeys(p for group in label_prompts + negative_prompts for p in group))
        position = {prompt: i for i, prompt in enumerate(unique)}
        embeds = embed_texts(unique)
        label_embeds = ensemble(embeds, [[position[p] for p in group] for group in label_prompts])

        if uses_sigmoid:
            plan = ScoringPlan("sigmoid", label_embeds, logit_scale, logit_bias)
        elif taxonomy.mode == "single":
            groups, parents = _sibling_groups(_parent_indices(taxonomy))
            plan = ScoringPlan("softmax", label_embeds, logit_scale, groups=groups, group_parents=parents)
        else:
            # Rivals: ensembled negative phrases, then the background labels' own embeddings.
            background = [i for i, label in enumerate(labels) if label.background]
            negatives = (
                ensemble(embeds, [[position[p] for p in group] for group in negative_prompts])
                if negative_prompts
                else np.zeros((0, label_embeds.shape[1]), dtype=np.float32)
            )
            rivals = np.concatenate([negatives, label_embeds[background]])
            mask = np.zeros((len(labels), rivals.shape[0]), dtype=bool)
            mask[:, len(negative_phrases):] = True  # every label also faces the background labels
            phrase_index = {phrase: j for j, phrase in enumerate(negative_phrases)}
            for i, label in enumerate(labels):
                for phrase in label.negatives or taxonomy.negatives:
                    mask[i, phrase_index[phrase]] = True
            plan = ScoringPlan(
                "contrastive", label_embeds, logit_scale, competitor_embeds=rivals, competitor_mask=mask
            )
        return cls(taxonomy, plan)

    def classify(self, image_embeds: np.ndarray, top_k: int | None = None) -> list[Classification]:
        scores_f32, cosine_f32 = self.plan.score(image_embeds)
        scores, cosines = scores_f32.astype(np.float64), cosine_f32.astype(np.float64)
        results = []
        for row, cos in zip(scores, cosines):
            tagged = self.tagged(row)
            verdict = self.verdict(tagged)
            ranked = sorted(self.reported, key=lambda i: -row[i])
            if top_k is not None:
                ranked = ranked[:top_k]
            results.append(
                Classification(
                    scores=[(self.names[i], float(row[i]), float(cos[i])) for i in ranked],
                    tags=[self.names[i] for i in tagged],
                    verdict=verdict,
                )
            )
        return results

    def tagged(self, row: np.ndarray) -> list[int]:
        """Indices of the labels that become tags for one row of scores (thresholds applied)."""
        return self._descend(row) if self.taxonomy.mode == "single" else self._fired(row)

    def verdict(self, tagged: Sequence[int]) -> str | None:
        """The strictest action among tagged labels (``allow`` when none fires); None without actions."""
        if not self.has_actions:
            return None
        worst = max((self.severity[i] for i in tagged), default=0)
        return next(a for a, s in ACTION_SEVERITY.items() if s == worst)

    def _descend(self, row: np.ndarray) -> list[int]:
        """Single-label: best label per level, root down, while it clears its threshold."""
        tagged, siblings = [], self.children.get(-1, [])
        while siblings:
            best = max(siblings, key=lambda i: row[i])
            if self.background[best] or row[best] < self.thresholds[best]:
                break
            tagged.append(best)
            siblings = self.children.get(best, [])
        return tagged

    def _fired(self, row: np.ndarray) -> list[int]:
        """Multi-label: every label over its threshold whose parent fired too, best first."""
        fired = (row >= self.thresholds) & ~self.background
        for i in self.order:
            if self.parents[i] >= 0 and not fired[self.parents[i]]:
                fired[i] = False
        return sorted(np.flatnonzero(fired).tolist(), key=lambda i: -row[i])


def _parent_indices(taxonomy: Taxonomy) -> list[int]:
    index = {label.name: i for i, label in enumerate(taxonomy.labels)}
    return [index[label.parent] if label.parent is not None else -1 for label in taxonomy.labels]


def _depths(parents: list[int]) -> list[int]:
    """Each label's depth in the hierarchy (roots 0); every label is walked over once."""
    depth = [-1] * len(parents)
    for i in range(len(parents)):
        chain, node = [], i
        while node >= 0 and depth[node] < 0:
            chain.append(node)
            node = parents[node]
        d = depth[node] if node >= 0 else -1
        for member in reversed(chain):
            d += 1
            depth[member] = d
    return depth


def _sibling_groups(parents: list[int]) -> tuple[list[np.ndarray], list[int]]:
    """Labels that compete with each other (same parent), groups of shallower parents first."""
    depth = _depths(parents)
    members: dict[int, list[int]] = {}
    for i, parent in enumerate(parents):
        members.setdefault(parent, []).append(i)
    order = sorted(members, key=lambda p: -1 if p < 0 else depth[p])
    return [np.array(members[p]) for p in order], order
