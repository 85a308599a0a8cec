"""The decision trail of a result: why each fired label fired, and why the closest other one did not.

For every label that became a tag, and for the strongest label that did not, one entry:

- ``prompt`` / ``prompt_cosine``: the prompt of the label's ensemble closest to the image
  (each prompt's own text embedding, before averaging);
- ``rival`` / ``rival_kind`` / ``margin``: what the label was weighed against and lost or won
  by: in multi-label (contrastive) scoring its strongest competitor (``negative`` phrase,
  ``background`` label or its ``counter_examples``); in single-label scoring its strongest
  sibling (``label`` or ``background``); with sigmoid scoring the strongest other label.
  ``margin`` is the label's logit minus the rival's, divided by the model's logit scale
  (for text-only scoring: the difference of the two cosines);
- ``threshold`` / ``threshold_from`` / ``threshold_source``: the threshold applied and where it
  came from (``label``: the label's own, ``default``: the taxonomy's default, ``calibration``:
  ``zstagger calibrate``, ``match_threshold``: known images) and which taxonomy version or
  calibration run set it;
- ``known_image``: for labels with known images, the closest one, its cosine and whether it matched;
- ``text_score``: for taxonomies with example images, the label's score from its text alone
  (the score minus it is how much the example images moved it).

:class:`TrailPlan` is built once per compiled taxonomy (it keeps the per-prompt embeddings);
:meth:`TrailPlan.explain` works on a whole batch with numpy and a few operations per entry,
so the trail costs a small fraction of encoding the image. Imports only the engine and the
taxonomy; the classifier owns it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .engine.scoring import ScoringPlan
from .engine.vectors import normalize
from .taxonomy import Taxonomy

RIVAL_KINDS = ("negative", "background", "counter_examples", "label")


@dataclass
class TrailPlan:
    """What a decision trail needs of a compiled taxonomy (see the module docstring)."""

    names: list[str]  # every label
    scored: np.ndarray  # label index of each scoring column
    prompts: list[str]  # every distinct prompt
    prompt_embeds: np.ndarray  # (U, D) unit rows, one per prompt
    label_prompts: list[np.ndarray]  # per scoring column: its prompts (rows of prompt_embeds)
    plan: ScoringPlan | None
    rival_names: list[str]  # contrastive: one per competitor column
    rival_kinds: list[str]
    text_plan: ScoringPlan | None  # the same scoring without example images (None: the taxonomy has none)
    threshold_from: list[str]  # per label
    threshold_source: list[str]  # per label
    background: np.ndarray  # (L,) bool

    def __post_init__(self) -> None:
        self.column = np.full(len(self.names), -1, dtype=np.int64)
        self.column[self.scored] = np.arange(len(self.scored))
        self.siblings: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(self.scored)
        if self.plan is not None and self.plan.rule == "softmax":
            for group in self.plan.groups:
                for column in group.tolist():
                    self.siblings[column] = group[group != column]
        elif self.plan is not None and self.plan.rule == "sigmoid":
            every = np.arange(len(self.scored))
            self.siblings = [every[every != column] for column in range(len(self.scored))]

    def explain(self, images: np.ndarray, scores: np.ndarray, fired: np.ndarray, reported: Sequence[int],
                thresholds: np.ndarray, known: KnownTrail | None) -> list[list[dict]]:
        """One trail per image: ``scores`` (B, L) every label's score, ``fired`` (B, L) the tag mask,
        ``reported`` the labels that can be the strongest non-fired one; ``known``: the batch's
        closest known images (None without any)."""
        images = np.asarray(images, dtype=np.float32)
        rows = images.shape[0]
        if rows == 0:
            return []
        reported_arr = np.asarray(reported, dtype=np.int64)
        # The strongest label that did not fire (among the reported ones), per image.
        candidates = np.where(fired[:, reported_arr], -np.inf, scores[:, reported_arr])
        runner_up = reported_arr[np.argmax(candidates, axis=1)] if len(reported_arr) else np.zeros(rows, dtype=np.int64)
        has_runner_up = np.isfinite(candidates.max(axis=1, initial=-np.inf))
        if self.plan is not None:
            # Logits for the whole batch (as scoring computes them); cosines only for the entries shown.
            logits, competitor_logits, _ = self.plan.logits(images)
            text_scores = self.text_plan.score(images)[0] if self.text_plan is not None else None
        scale = self.plan.logit_scale if self.plan is not None else 1.0
        out: list[list[dict]] = []
        fired_lists = [np.flatnonzero(row).tolist() for row in fired]
        for b in range(rows):
            chosen = fired_lists[b] + ([int(runner_up[b])] if has_runner_up[b] else [])
            trail = []
            for label in chosen:
                entry = {"label": self.names[label], "fired": bool(fired[b, label]), "score": float(scores[b, label]),
                         "threshold": float(thresholds[label]), "threshold_from": self.threshold_from[label],
                         "threshold_source": self.threshold_source[label]}
                column = int(self.column[label])
                if column >= 0 and self.plan is not None:
                    own = self.label_prompts[column]
                    cosines = self.prompt_embeds[own] @ images[b]
                    at = int(np.argmax(cosines))
                    entry["prompt"], entry["prompt_cosine"] = self.prompts[int(own[at])], float(cosines[at])
                    if competitor_logits is not None:
                        pool = self.plan._rival_columns[self.plan._rival_starts[column]:
                                                        self.plan._rival_starts[column] + self.plan._rival_counts[column]]
                        rival = int(pool[np.argmax(competitor_logits[b, pool])])
                        entry.update(rival=self.rival_names[rival], rival_kind=self.rival_kinds[rival],
                                     rival_cosine=float(self.plan.competitor_embeds[rival] @ images[b]),  # type: ignore[index]
                                     margin=float((logits[b, column] - competitor_logits[b, rival]) / scale))
                    elif len(self.siblings[column]):
                        pool = self.siblings[column]
                        rival = int(pool[np.argmax(logits[b, pool])])
                        other = int(self.scored[rival])
                        entry.update(rival=self.names[other], rival_kind="background" if self.background[other] else "label",
                                     rival_cosine=float(self.plan.label_embeds[rival] @ images[b]),
                                     margin=float((logits[b, column] - logits[b, rival]) / scale))
                    if text_scores is not None:
                        entry["text_score"] = float(text_scores[b, column])
                if known is not None and label in known.slot:
                    j = known.slot[label]
                    entry["known_image"] = {"image": known.names[int(known.rows[b, j])],
                                            "cosine": float(known.cosines[b, j]), "matched": bool(known.matched[b, label])}
                trail.append(entry)
            out.append(trail)
        return out


@dataclass
class KnownTrail:
    """A batch's closest known image per label with known images (from the classifier's scoring)."""

    slot: dict[int, int]  # label index -> column of rows/cosines
    names: list[str]  # known image names, by row
    rows: np.ndarray  # (B, K)
    cosines: np.ndarray  # (B, K)
    matched: np.ndarray  # (B, L)


def threshold_origins(taxonomy: Taxonomy) -> tuple[list[str], list[str]]:
    """Per label: where its threshold came from, and which taxonomy version or calibration run set it."""
    here = f"{taxonomy.name}@{taxonomy.version}"
    calibration = taxonomy.calibration
    origins, sources = [], []
    for label in taxonomy.labels:
        run = calibration.labels.get(label.name) if calibration is not None else None
        if label.match_only:
            origins.append("match_threshold")
            sources.append(here)
        elif run is not None and run.status == "calibrated" and label.threshold is not None:
            origins.append("calibration")
            sources.append(f"{here}, calibrated from {calibration.source} on {calibration.dataset} "  # type: ignore[union-attr]
                           f"({calibration.images} images, {calibration.date}, {run.target})")  # type: ignore[union-attr]
        else:
            origins.append("label" if label.threshold is not None else "default")
            sources.append(here)
    return origins, sources


def unit_prompts(prompt_embeds: np.ndarray) -> np.ndarray:
    """Each prompt's own unit embedding (the rows prompt ensembling averages)."""
    return normalize(np.asarray(prompt_embeds, dtype=np.float32))
