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

_ACTION_OF = {severity: action for action, severity in ACTION_SEVERITY.items()}


@dataclass(frozen=True)
class Classification:
    """Scores for one image: (label, score, cosine) sorted best first, plus tags and verdict."""

    scores: list[tuple[str, float, float]]
    tags: list[str]
    verdict: str | None


@dataclass
class BatchClassification:
    """A batch of images classified at once, ready to become results."""

    ranked: np.ndarray  # (N, K) int: reported label indices, best first (``top_k`` of them)
    scores: np.ndarray  # (N, K) float64: their scores, same order
    cosines: np.ndarray  # (N, K) float64
    tags: list[list[int]]  # label indices that became tags
    verdicts: list[str | None]


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
        batch = self.classify_batch(image_embeds, top_k)
        names = self.names
        return [
            Classification(scores=[(names[i], s, c) for i, s, c in zip(ranked, scores, cosines)],
                           tags=[names[i] for i in tags], verdict=verdict)
            for ranked, scores, cosines, tags, verdict in zip(batch.ranked.tolist(), batch.scores.tolist(),
                                                             batch.cosines.tolist(), batch.tags, batch.verdicts)
        ]

    def classify_batch(self, image_embeds: np.ndarray, top_k: int | None = None) -> BatchClassification:
        """Score a batch and apply the taxonomy's rules to every row at once (no per-label Python)."""
        scores_f32, cosine_f32 = self.plan.score(image_embeds)
        scores, cosines = scores_f32.astype(np.float64), cosine_f32.astype(np.float64)
        ranked = self._ranked(scores)
        tags, mask = self._tags(scores, ranked)
        shown = ranked[:, :top_k] if top_k is not None else ranked
        return BatchClassification(
            ranked=shown,
            scores=np.take_along_axis(scores, shown, axis=1),
            cosines=np.take_along_axis(cosines, shown, axis=1),
            tags=tags,
            verdicts=[_ACTION_OF[s] for s in self.severities(mask).tolist()] if self.has_actions else [None] * len(tags),
        )

    def tagged(self, row: np.ndarray) -> list[int]:
        """Indices of the labels that become tags for one row of scores (thresholds applied)."""
        return self.tag_rows(np.asarray(row, dtype=np.float64)[None, :])[0]

    def tag_rows(self, scores: np.ndarray) -> list[list[int]]:
        """Tags of each row of scores (N, L): single-label, the best label per level from the root
        down while it clears its threshold; multi-label, every label over its threshold whose
        parent fired too, best first."""
        return self._tags(scores, self._ranked(scores) if self.taxonomy.mode != "single" else None)[0]

    def tag_mask(self, scores: np.ndarray) -> np.ndarray:
        """(N, L) bool: which labels became tags, for each row of scores."""
        if self.taxonomy.mode != "single":
            return self._fired(scores)
        return self._tags(scores, None)[1]

    def severities(self, mask: np.ndarray) -> np.ndarray:
        """(N,) int: the severity of each row's verdict (see ACTION_SEVERITY) from its tag mask."""
        return np.where(mask, np.asarray(self.severity), 0).max(axis=1, initial=0)

    def _ranked(self, scores: np.ndarray) -> np.ndarray:
        """The reported labels of each row, best first; ties keep label order (a stable sort, as
        Python's sorted() on each row)."""
        reported = np.asarray(self.reported, dtype=np.int64)
        return reported[np.argsort(-scores[:, reported], axis=1, kind="stable")]

    def _tags(self, scores: np.ndarray, ranked: np.ndarray | None) -> tuple[list[list[int]], np.ndarray]:
        """Each row's tags (in order) and the (N, L) mask of them."""
        if self.taxonomy.mode == "single":
            paths = self._descend(scores)
            mask = np.zeros(scores.shape, dtype=bool)
            for row, path in enumerate(paths):
                mask[row, path] = True
            return paths, mask
        fired = self._fired(scores)
        keep = np.take_along_axis(fired, ranked, axis=1)  # type: ignore[arg-type]
        flat = ranked[keep].tolist()  # type: ignore[index]  # row by row, each row best first
        ends = np.cumsum(keep.sum(axis=1)).tolist()
        return [flat[start:end] for start, end in zip([0, *ends[:-1]], ends)], fired

    def _fired(self, scores: np.ndarray) -> np.ndarray:
        fired = (scores >= self.thresholds) & ~self.background
        for i in self.order:  # parents before children
            if self.parents[i] >= 0:
                fired[:, i] &= fired[:, self.parents[i]]
        return fired

    def verdict(self, tagged: Sequence[int]) -> str | None:
        """The strictest action among tagged labels (``allow`` when none fires); None without actions."""
        if not self.has_actions:
            return None
        return _ACTION_OF[max((self.severity[i] for i in tagged), default=0)]

    def _descend(self, scores: np.ndarray) -> list[list[int]]:
        """Single-label: per level, the best of the current label's children (first best on ties)."""
        rows = len(scores)
        path: list[list[int]] = [[] for _ in range(rows)]
        current = np.full(rows, -1, dtype=np.int64)
        active = np.ones(rows, dtype=bool)
        while active.any():
            for node in np.unique(current[active]).tolist():
                members = np.flatnonzero(active & (current == node))
                siblings = self.children.get(node)
                if not siblings:
                    active[members] = False
                    continue
                siblings_arr = np.asarray(siblings, dtype=np.int64)
                best = siblings_arr[scores[np.ix_(members, siblings_arr)].argmax(axis=1)]
                ok = ~self.background[best] & (scores[members, best] >= self.thresholds[best])
                for row, label in zip(members[ok].tolist(), best[ok].tolist()):
                    path[row].append(label)
                current[members[ok]] = best[ok]
                active[members[~ok]] = False
        return path


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
