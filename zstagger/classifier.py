"""A taxonomy compiled against one model: text embeddings computed once, then reused.

:class:`TaxonomyClassifier` turns a :class:`~zstagger.taxonomy.Taxonomy` into an engine
:class:`~zstagger.engine.ScoringPlan` (prompt-ensembled label embeddings, competitor
structure, hierarchy) and turns scores into tags and a moderation verdict.

With image sets (:class:`~zstagger.fewshot.ImageSets`): example images are combined with
the text as the taxonomy's ``few_shot`` says (:mod:`zstagger.engine.fewshot`),
counter-examples become competitors of their label, and known images are matched: a
label fires when an image is within its ``match_threshold`` of one of them. A label given
only known images takes no part in scoring; its score is its best cosine to them.

Facets are compiled as the single-label taxonomies they are (:meth:`Taxonomy.facet_taxonomy`),
each a :class:`FacetClassifier`, and scored only for the images they apply to. With
``descent: {scoring: entered}`` a hierarchy is scored level by level, each image only
against the children of the label it chose (:meth:`TaxonomyClassifier.score`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .engine.fewshot import NEUTRAL, ImageEvidence, best_matches, blend_prototypes
from .engine.scoring import InputTexts, ScoringPlan, ensemble, fuse, sigmoid, softmax
from .errors import ExamplesError
from .fewshot import ImageSets
from .taxonomy import ACTION_SEVERITY, FACET_NONE, Descent, Facet, FewShot, Taxonomy
from .trail import KnownTrail, TrailPlan, threshold_origins, unit_prompts

_ACTION_OF = {severity: action for action, severity in ACTION_SEVERITY.items()}


@dataclass(frozen=True)
class Classification:
    """Scores for one image: (label, score, cosine) sorted best first, plus tags and verdict;
    ``matches``: (label, known image, cosine) for each label fired by a known image."""

    scores: list[tuple[str, float, float]]
    tags: list[str]
    verdict: str | None
    matches: list[tuple[str, str, float]] | None = None
    explanation: list[dict] | None = None  # the decision trail (:mod:`zstagger.trail`), when asked for
    facets: dict[str, dict] | None = None  # facet name -> {"value": str | None, "score": float | None}
    category: dict | None = None  # taxonomies with metadata: the deepest tag, its path and its metadata


@dataclass(frozen=True)
class BatchScores:
    """A batch scored against every label of the taxonomy (columns in taxonomy order)."""

    scores: np.ndarray  # (B, L) float64
    cosines: np.ndarray  # (B, L) float64
    matched: np.ndarray  # (B, L) bool: a known image is within the label's match_threshold
    match_rows: np.ndarray  # (B, K): per known-image label, the closest known image (its row)
    match_cosines: np.ndarray  # (B, K): and its cosine


@dataclass
class KnownImages:
    """Every label's known images as one matrix; each label owns a range of rows."""

    vectors: np.ndarray  # (N, D) unit rows
    labels: list[int]  # label index of each range
    bounds: list[tuple[int, int]]
    names: list[str]  # one per row
    thresholds: np.ndarray  # match_threshold of each range's label


@dataclass
class BatchClassification:
    """A batch of images classified at once, ready to become results."""

    ranked: np.ndarray  # (N, K) int: reported label indices, best first (``top_k`` of them)
    scores: np.ndarray  # (N, K) float64: their scores, same order
    cosines: np.ndarray  # (N, K) float64
    tags: list[list[int]]  # label indices that became tags
    verdicts: list[str | None]
    matches: list[list[tuple[str, str, float]] | None]  # per image: the known images it matched (see Classification)
    explanations: list[list[dict]] | None = None  # per image: its decision trail (:mod:`zstagger.trail`), when asked for
    facets: list[dict[str, dict]] | None = None  # per image: facet name -> {"value", "score"} (taxonomies with facets)
    categories: list[dict | None] | None = None  # per image: see Classification.category (taxonomies with metadata)


class FacetClassifier:
    """One facet compiled as the single-label taxonomy it is: its values and its "not visible"
    outcome compete (softmax, or the model's sigmoid); the best value is the facet's value when
    it wins and clears the threshold. Scored only for the images it applies to."""

    def __init__(self, facet: Facet, classifier: TaxonomyClassifier, applies_to: list[int]):
        self.name = facet.name
        self.classifier = classifier
        self.applies_to = np.asarray(applies_to, dtype=np.int64) if applies_to else None
        self.values = np.asarray([i for i, n in enumerate(classifier.names) if n != FACET_NONE], dtype=np.int64)

    @property
    def value_names(self) -> list[str]:
        return [self.classifier.names[i] for i in self.values.tolist()]

    def outcomes(self, image_embeds: np.ndarray, tag_mask: np.ndarray) -> FacetOutcomes:
        """Per image: whether the facet applies (one of ``applies_to`` among its tags), its best
        value (an index into :attr:`value_names`) and that value's score, and whether that value
        won the group (the "not visible" outcome did not beat it); only applying rows are scored."""
        count = len(tag_mask)
        applies = np.ones(count, dtype=bool) if self.applies_to is None else tag_mask[:, self.applies_to].any(axis=1)
        rows = np.flatnonzero(applies)
        best = np.zeros(count, dtype=np.int64)
        score = np.zeros(count, dtype=np.float64)
        wins = np.zeros(count, dtype=bool)
        if rows.size:
            scores = self.classifier.score(np.asarray(image_embeds)[rows]).scores
            pick = scores[:, self.values].argmax(axis=1)  # values come before the "not visible" outcome: they win ties
            best[rows], score[rows] = pick, scores[np.arange(len(rows)), self.values[pick]]
            wins[rows] = scores.argmax(axis=1) == self.values[pick]
        return FacetOutcomes(applies, best, score, wins)

    def fired(self, outcomes: FacetOutcomes, threshold: float | None = None) -> np.ndarray:
        """(N,) bool: the best value is the facet's value (it applies, won, and clears its threshold:
        the value's own, else the facet's; ``threshold`` instead, when given)."""
        limit = self.classifier.thresholds[self.values][outcomes.best] if threshold is None else threshold
        return outcomes.applies & outcomes.wins & (outcomes.score >= limit)

    def classify(self, image_embeds: np.ndarray, tag_mask: np.ndarray) -> list[dict]:
        """Per image: ``{"value": name or None, "score": best value's score or None}``; both None
        where the facet does not apply (none of ``applies_to`` among the image's tags)."""
        found = self.outcomes(image_embeds, tag_mask)
        fired = self.fired(found)
        names = self.value_names
        return [{"value": names[b] if f else None, "score": s} if a else {"value": None, "score": None}
                for a, b, s, f in zip(found.applies.tolist(), found.best.tolist(), found.score.tolist(), fired.tolist())]


@dataclass
class FacetOutcomes:
    """One facet over a batch (see :meth:`FacetClassifier.outcomes`)."""

    applies: np.ndarray  # (N,) bool
    best: np.ndarray  # (N,) int: index into the facet's value names
    score: np.ndarray  # (N,) float64: the best value's score (0 where it does not apply)
    wins: np.ndarray  # (N,) bool: the best value beat the "not visible" outcome


class TaxonomyClassifier:
    def __init__(self, taxonomy: Taxonomy, plan: ScoringPlan | None, known: KnownImages | None = None,
                 image_sets: ImageSets | None = None):
        self.taxonomy = taxonomy
        self.plan = plan
        self.fusion = taxonomy.text_fusion  # None: images are scored alone, whatever text comes with them
        self.known = known
        # Where the image sets came from ("embedded vectors" or "image files") and their sizes; not
        # the sets themselves, so that a pack's memory goes once the plan is built.
        self.images_from = image_sets.origin if image_sets is not None else None
        self.image_counts: dict[str, dict[str, int]] = {}
        for (label, kind), found in (image_sets.sets if image_sets is not None else {}).items():
            self.image_counts.setdefault(label, {})[kind] = len(found.names)
        labels = taxonomy.labels
        self.names = [label.name for label in labels]
        self.thresholds = np.array([taxonomy.threshold_of(label) for label in labels], dtype=np.float64)
        self.background = np.array([label.background for label in labels], dtype=bool)
        self.parents = _parent_indices(taxonomy)
        self.severity = [ACTION_SEVERITY[label.action or "allow"] for label in labels]
        self.has_actions = taxonomy.has_actions
        # Plan columns are the labels that are scored; labels matched by known images alone are not.
        self.scored = np.array([i for i, label in enumerate(labels) if not label.match_only], dtype=np.int64)
        self.match_only = np.array([i for i, label in enumerate(labels) if label.match_only], dtype=np.int64)
        depth = _depths(self.parents)
        self.order = sorted(range(len(labels)), key=lambda i: depth[i])
        self.children: dict[int, list[int]] = {}
        for i in self.scored.tolist():
            self.children.setdefault(self.parents[i], []).append(i)
        # Multi-label mode reports the labels that can be tags; background labels are only rivals.
        self.reported = [i for i in range(len(labels)) if taxonomy.mode == "single" or not labels[i].background]
        self.trail: TrailPlan | None = None  # set by build(): what decision trails need
        self.descent = taxonomy.descent or Descent()
        self.facets: list[FacetClassifier] = []  # set by build()
        self.metadata = [taxonomy.metadata.get(name) for name in self.names] if taxonomy.metadata else None
        # (image, label) scores computed so far: every label per image, or (descent scoring
        # "entered") only the labels of the levels each image entered. A figure, not a limit.
        self.labels_scored = 0

    @classmethod
    def build(
        cls,
        taxonomy: Taxonomy,
        embed_texts: Callable[[Sequence[str]], np.ndarray],
        *,
        logit_scale: float,
        logit_bias: float | None = None,
        uses_sigmoid: bool = False,
        image_sets: ImageSets | None = None,
    ) -> TaxonomyClassifier:
        """Embed every prompt of the taxonomy once (``embed_texts``) and build the plan; each
        facet likewise, as the single-label taxonomy it is.

        ``image_sets``: the taxonomy's example, counter-example and known images for this
        model (:func:`zstagger.fewshot.resolve_image_sets`); required when it names any.
        """
        model = {"logit_scale": logit_scale, "logit_bias": logit_bias, "uses_sigmoid": uses_sigmoid}
        own_sets = image_sets.without_facets(taxonomy) if image_sets is not None else None
        compiled = cls._build_labels(taxonomy, embed_texts, image_sets=own_sets, **model)
        index = {name: i for i, name in enumerate(compiled.names)}
        for facet in taxonomy.facets:
            sets = image_sets.under(facet.image_key("")) if image_sets is not None else None
            inner = cls._build_labels(taxonomy.facet_taxonomy(facet), embed_texts, image_sets=sets, **model)
            compiled.facets.append(FacetClassifier(facet, inner, [index[name] for name in facet.applies_to]))
        return compiled

    @classmethod
    def _build_labels(
        cls,
        taxonomy: Taxonomy,
        embed_texts: Callable[[Sequence[str]], np.ndarray],
        *,
        logit_scale: float,
        logit_bias: float | None = None,
        uses_sigmoid: bool = False,
        image_sets: ImageSets | None = None,
    ) -> TaxonomyClassifier:
        """The labels' plan (see :meth:`build`)."""
        if taxonomy.has_images and image_sets is None:
            raise ExamplesError(f"taxonomy {taxonomy.name!r} names images: compile it with their vectors (image_sets)")
        scored = [label for label in taxonomy.labels if not label.match_only]
        label_prompts = [taxonomy.prompts_for(label) for label in scored]
        negative_phrases = list(dict.fromkeys(n for label in scored for n in (label.negatives or taxonomy.negatives)))
        negative_prompts = [taxonomy.prompts_for(phrase) for phrase in negative_phrases]
        unique = list(dict.fromkeys(p for group in label_prompts + negative_prompts for p in group))
        position = {prompt: i for i, prompt in enumerate(unique)}
        embeds = embed_texts(unique) if unique else None
        known = _known_images(taxonomy, image_sets)
        if embeds is None:  # every label is matched by known images alone
            return cls(taxonomy, None, known, image_sets)._with_trail(unique, embeds, position, label_prompts, None, [], [])
        label_embeds = ensemble(embeds, [[position[p] for p in group] for group in label_prompts])
        few_shot = _FewShotPlan(scored, image_sets, taxonomy.few_shot or FewShot(), label_embeds.shape[1])

        text_embeds = label_embeds
        if uses_sigmoid or taxonomy.mode == "single":
            label_embeds = few_shot.blend(label_embeds, few_shot.label_sets)
            evidence = few_shot.evidence(few_shot.label_sets, [])
            if uses_sigmoid:
                plan = ScoringPlan("sigmoid", label_embeds, logit_scale, logit_bias, evidence=evidence)
            else:
                groups, parents = _sibling_groups(_parent_indices(taxonomy, scored))
                plan = ScoringPlan("softmax", label_embeds, logit_scale, groups=groups, group_parents=parents, evidence=evidence)
            trail_text = None
            if few_shot.sets:
                trail_text = (ScoringPlan("sigmoid", text_embeds, logit_scale, logit_bias) if uses_sigmoid else
                              ScoringPlan("softmax", text_embeds, logit_scale, groups=groups, group_parents=parents))
            return cls(taxonomy, plan, known, image_sets)._with_trail(unique, embeds, position, label_prompts, trail_text, [], [])

        # Rivals: ensembled negative phrases, the background labels' own embeddings, then
        # each label's counter-examples (its own text with their images).
        background = [i for i, label in enumerate(scored) if label.background]
        counters = [i for i, label in enumerate(scored) if label.negative_examples]
        negatives = (
            ensemble(embeds, [[position[p] for p in group] for group in negative_prompts])
            if negative_prompts
            else np.zeros((0, label_embeds.shape[1]), dtype=np.float32)
        )
        rival_text = np.concatenate([negatives, label_embeds[background], label_embeds[counters]])
        rival_sets = ([NEUTRAL] * len(negative_phrases) + [few_shot.label_sets[i] for i in background]
                      + [few_shot.counter_sets[i] for i in counters])
        label_embeds, rivals = few_shot.blend(label_embeds, few_shot.label_sets), few_shot.blend(rival_text, rival_sets)
        evidence = few_shot.evidence(few_shot.label_sets, rival_sets)
        mask = np.zeros((len(scored), rivals.shape[0]), dtype=bool)
        first_counter = len(negative_phrases) + len(background)
        mask[:, len(negative_phrases):first_counter] = True  # every label also faces the background labels
        phrase_index = {phrase: j for j, phrase in enumerate(negative_phrases)}
        for i, label in enumerate(scored):
            for phrase in label.negatives or taxonomy.negatives:
                mask[i, phrase_index[phrase]] = True
        for j, i in enumerate(counters):
            mask[i, first_counter + j] = True
        plan = ScoringPlan(
            "contrastive", label_embeds, logit_scale, competitor_embeds=rivals, competitor_mask=mask, evidence=evidence
        )
        trail_text = ScoringPlan("contrastive", text_embeds, logit_scale, competitor_embeds=rival_text,
                                 competitor_mask=mask) if few_shot.sets else None
        rival_names = negative_phrases + [scored[i].name for i in background] + [scored[i].name for i in counters]
        rival_kinds = (["negative"] * len(negative_phrases) + ["background"] * len(background)
                       + ["counter_examples"] * len(counters))
        return cls(taxonomy, plan, known, image_sets)._with_trail(unique, embeds, position, label_prompts, trail_text,
                                                                  rival_names, rival_kinds)

    def _with_trail(self, prompts: list[str], embeds: np.ndarray | None, position: dict[str, int],
                    label_prompts: list[list[str]], text_plan: ScoringPlan | None, rival_names: list[str],
                    rival_kinds: list[str]) -> TaxonomyClassifier:
        """Keep what decision trails need: each prompt's own embedding, the rivals' names, the text-only plan."""
        origins, sources = threshold_origins(self.taxonomy)
        dim = embeds.shape[1] if embeds is not None else 1
        self.trail = TrailPlan(
            names=self.names, scored=self.scored, prompts=prompts,
            prompt_embeds=unit_prompts(embeds) if embeds is not None else np.zeros((0, dim), dtype=np.float32),
            label_prompts=[np.asarray([position[p] for p in group], dtype=np.int64) for group in label_prompts],
            plan=self.plan, rival_names=rival_names, rival_kinds=rival_kinds, text_plan=text_plan,
            threshold_from=origins, threshold_source=sources, background=self.background,
        )
        return self

    def explain(self, image_embeds: np.ndarray, batch: BatchScores, fired: np.ndarray) -> list[list[dict]]:
        """The decision trail of each image of a scored batch (``fired``: its tag mask)."""
        known = None
        if self.known is not None:
            known = KnownTrail({label: j for j, label in enumerate(self.known.labels)}, self.known.names,
                               batch.match_rows, batch.match_cosines, batch.matched)
        return self.trail.explain(image_embeds, batch.scores, fired, self.reported, self.thresholds, known)  # type: ignore[union-attr]

    def score(self, image_embeds: np.ndarray, texts: InputTexts | None = None) -> BatchScores:
        """Every label's score and cosine for a batch of unit image embeddings, and the known-image
        matches. ``texts``: the images that came with text have it fused as the taxonomy's
        ``text_fusion`` says (none: text is not used); the others are scored from the image alone."""
        images = np.asarray(image_embeds, dtype=np.float32)
        batch, count = images.shape[0], len(self.names)
        scores = np.zeros((batch, count), dtype=np.float64)
        cosines = np.zeros((batch, count), dtype=np.float64)
        if self.plan is not None and self.descent.scoring == "entered":
            self._score_entered(images, scores, cosines, texts if self.fusion is not None else None)
        elif self.plan is not None:
            plan_scores, plan_cosines = self.plan.score(images)
            if texts is not None and len(texts.rows) and self.fusion is not None:
                fused, _ = self.plan.score_fused(images[texts.rows], texts.embeds, self.fusion.method, self.fusion.weight)
                plan_scores = plan_scores.copy()
                plan_scores[texts.rows] = fused
            scores[:, self.scored], cosines[:, self.scored] = plan_scores, plan_cosines
            self.labels_scored += batch * len(self.scored)
        matched = np.zeros((batch, count), dtype=bool)
        rows = best = np.zeros((batch, 0))
        if self.known is not None:
            if images.shape[1] != self.known.vectors.shape[1]:
                raise ExamplesError(f"taxonomy {self.taxonomy.name!r}: its known images are {self.known.vectors.shape[1]}-d "
                                    f"vectors, this model's images {images.shape[1]}-d: they were embedded with another model")
            rows, best = best_matches(images, self.known.vectors, self.known.bounds)
            labels = np.asarray(self.known.labels, dtype=np.int64)
            matched[:, labels] = best >= self.known.thresholds
            only = np.isin(labels, self.match_only)
            scores[:, labels[only]] = np.clip(best[:, only], 0.0, 1.0)
            cosines[:, labels[only]] = best[:, only]
        return BatchScores(scores, cosines, matched, rows, best)

    def _score_entered(self, images: np.ndarray, scores: np.ndarray, cosines: np.ndarray,
                       texts: InputTexts | None = None) -> None:
        """Descent scoring "entered": level by level, each image scored only against the children
        of the label it chose (softmax among them times the parent's score, or the model's sigmoid);
        labels of branches it did not enter keep 0. Every label is scored (no known-image-only
        labels: the spec refuses them here), so plan columns are label indices. ``texts``: rows
        with a text have it fused at each level as the taxonomy's ``text_fusion`` says, exactly
        as scoring every label would (``logit_mean``: the softmax of the mixed logits times the
        parent's score; ``prob_mean``: each side's path probability, mixed)."""
        plan = self.plan
        assert plan is not None
        rows = len(images)
        current = np.full(rows, -1, dtype=np.int64)
        active = np.ones(rows, dtype=bool)
        parent_score = np.ones(rows, dtype=np.float64)
        text_of = np.full(rows, -1, dtype=np.int64)  # the row's text among texts.embeds (-1: none)
        if texts is not None and len(texts.rows):
            text_of[np.asarray(texts.rows, dtype=np.int64)] = np.arange(len(texts.rows))
        fusion = self.fusion
        weight = fusion.weight if fusion is not None else 0.0
        image_parent = np.ones(rows, dtype=np.float64)  # prob_mean: each side's own path probability
        text_parent = np.ones(rows, dtype=np.float64)
        while active.any():
            for node in np.unique(current[active]).tolist():
                members = np.flatnonzero(active & (current == node))
                kids = self.children.get(node)
                if not kids:
                    active[members] = False
                    continue
                kids_arr = np.asarray(kids, dtype=np.int64)
                cos = images[members] @ plan.label_embeds[kids_arr].T
                logits = plan.logit_scale * cos
                level = self._level(logits, parent_score[members])
                with_text = np.flatnonzero(text_of[members] >= 0)
                if with_text.size and fusion is not None:
                    assert texts is not None
                    text_logits = plan.logit_scale * (texts.embeds[text_of[members[with_text]]] @ plan.label_embeds[kids_arr].T)
                    if fusion.method == "logit_mean":
                        mixed = fuse(logits[with_text], text_logits, weight)
                        level[with_text] = self._level(mixed, parent_score[members[with_text]])
                    else:
                        image_side = self._level(logits[with_text], image_parent[members[with_text]])
                        text_side = self._level(text_logits, text_parent[members[with_text]])
                        level[with_text] = (1.0 - weight) * image_side + weight * text_side
                        picked = level[with_text].argmax(axis=1)
                        at = np.arange(len(with_text))
                        image_parent[members[with_text]] = image_side[at, picked]
                        text_parent[members[with_text]] = text_side[at, picked]
                scores[members[:, None], kids_arr[None, :]] = level
                cosines[members[:, None], kids_arr[None, :]] = cos
                self.labels_scored += members.size * kids_arr.size
                ok, best = self._step(level, kids_arr)
                current[members[ok]] = best[ok]
                parent_score[members[ok]] = level[ok].max(axis=1)
                active[members[~ok]] = False

    def _level(self, logits: np.ndarray, parent: np.ndarray) -> np.ndarray:
        """One level's scores from its logits: the model's sigmoid, or the softmax among the
        siblings times the parent's score."""
        plan = self.plan
        assert plan is not None
        if plan.rule == "sigmoid":
            return sigmoid(logits + (plan.logit_bias or 0.0)).astype(np.float64)
        return softmax(logits.astype(np.float64), axis=1) * parent[:, None]

    def _step(self, level: np.ndarray, siblings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For rows of sibling scores: the best sibling of each, and whether descent goes on to
        it (not a background label, its score clears its threshold, and its share among its
        siblings clears the descent's confidence stop)."""
        pick = level.argmax(axis=1)
        best = siblings[pick]
        top = level[np.arange(len(level)), pick]
        ok = ~self.background[best] & (top >= self.thresholds[best])
        if self.descent.stop > 0.0:
            total = level.sum(axis=1)
            ok &= top >= self.descent.stop * np.where(total > 0, total, 1.0)
        return ok, best

    def classify(self, image_embeds: np.ndarray, top_k: int | None = None, explain: bool = False,
                 texts: InputTexts | None = None) -> list[Classification]:
        return self.classifications(self.classify_batch(image_embeds, top_k, explain, texts))

    def classifications(self, batch: BatchClassification) -> list[Classification]:
        """A classified batch as one :class:`Classification` per row."""
        names = self.names
        return [
            Classification(scores=[(names[i], s, c) for i, s, c in zip(ranked, scores, cosines)],
                           tags=[names[i] for i in tags], verdict=verdict, matches=matches, explanation=trail,
                           facets=facets, category=category)
            for ranked, scores, cosines, tags, verdict, matches, trail, facets, category in zip(
                batch.ranked.tolist(), batch.scores.tolist(), batch.cosines.tolist(), batch.tags, batch.verdicts,
                batch.matches, batch.explanations or [None] * len(batch.tags), batch.facets or [None] * len(batch.tags),
                batch.categories or [None] * len(batch.tags))
        ]

    def classify_batch(self, image_embeds: np.ndarray, top_k: int | None = None, explain: bool = False,
                       texts: InputTexts | None = None) -> BatchClassification:
        """Score a batch and apply the taxonomy's rules to every row at once (no per-label Python);
        ``explain``: with each image's decision trail; ``texts``: see :meth:`score`. Facets are scored here (they need the
        images' embeddings, which an aggregated video row does not have)."""
        done = self.classify_scores(self.score(image_embeds, texts), top_k, image_embeds if explain else None)
        if self.facets:
            mask = np.zeros((len(done.tags), len(self.names)), dtype=bool)
            for row, tags in enumerate(done.tags):
                mask[row, tags] = True
            per_facet = [(facet.name, facet.classify(image_embeds, mask)) for facet in self.facets]
            done.facets = [{name: found[row] for name, found in per_facet} for row in range(len(done.tags))]
        return done

    def category(self, tags: Sequence[int]) -> dict | None:
        """Taxonomies with metadata: the deepest tag, its path (labels from the root) and its
        metadata (a Shopify ID, a Google product category ID...); None without a tag."""
        if not tags or self.metadata is None:
            return None
        deepest = max(tags, key=lambda i: len(self.taxonomy.path_of(self.names[i])))
        return {"label": self.names[deepest], "path": self.taxonomy.path_of(self.names[deepest]),
                **(self.metadata[deepest] or {})}

    def classify_scores(self, batch: BatchScores, top_k: int | None = None,
                        explain_embeds: np.ndarray | None = None) -> BatchClassification:
        """Apply the taxonomy's rules (thresholds, hierarchy, actions, known images) to rows of
        scores: those of images (:meth:`score`), or a video's frames aggregated into one row.
        ``explain_embeds``: the images' embeddings, for each one's decision trail."""
        ranked = self._ranked(batch.scores)
        tags, mask = self._tags(batch.scores, ranked, batch.matched)
        shown = ranked[:, :top_k] if top_k is not None else ranked
        return BatchClassification(
            ranked=shown,
            scores=np.take_along_axis(batch.scores, shown, axis=1),
            cosines=np.take_along_axis(batch.cosines, shown, axis=1),
            tags=tags,
            verdicts=[_ACTION_OF[s] for s in self.severities(mask).tolist()] if self.has_actions else [None] * len(tags),
            matches=[self.matches(batch, b) for b in range(len(tags))] if self.known is not None else [None] * len(tags),
            explanations=self.explain(explain_embeds, batch, mask) if explain_embeds is not None else None,
            categories=[self.category(t) for t in tags] if self.metadata is not None else None,
        )

    def matches(self, batch: BatchScores, b: int) -> list[tuple[str, str, float]] | None:
        """(label, known image, cosine) for each label that image ``b`` matched, closest first; None without any."""
        if self.known is None or not batch.matched[b].any():
            return None
        found = [(self.names[label], self.known.names[int(batch.match_rows[b, j])], min(1.0, float(batch.match_cosines[b, j])))
                 for j, label in enumerate(self.known.labels) if batch.matched[b, label]]
        return sorted(found, key=lambda m: -m[2])

    def tagged(self, row: np.ndarray, matched: np.ndarray | None = None) -> list[int]:
        """Indices of the labels that become tags for one row of scores (thresholds applied);
        ``matched``: labels whose known images the image matched, which fire whatever their score."""
        return self.tag_rows(np.asarray(row, dtype=np.float64)[None, :], None if matched is None else matched[None, :])[0]

    def tag_rows(self, scores: np.ndarray, matched: np.ndarray | None = None) -> list[list[int]]:
        """Tags of each row of scores (N, L): single-label, the best label per level from the root
        down while it clears its threshold; multi-label, every label over its threshold whose
        parent fired too, best first. ``matched`` (N, L): labels fired by a known image, whatever
        their score (in single-label mode they follow the path, best first)."""
        return self._tags(scores, self._ranked(scores) if self.taxonomy.mode != "single" else None, matched)[0]

    def tag_mask(self, scores: np.ndarray, matched: np.ndarray | None = None) -> np.ndarray:
        """(N, L) bool: which labels became tags, for each row of scores."""
        if self.taxonomy.mode != "single":
            return self._fired(scores, matched)
        return self._tags(scores, None, matched)[1]

    def severities(self, mask: np.ndarray) -> np.ndarray:
        """(N,) int: the severity of each row's verdict (see ACTION_SEVERITY) from its tag mask."""
        return np.where(mask, np.asarray(self.severity), 0).max(axis=1, initial=0)

    def _ranked(self, scores: np.ndarray) -> np.ndarray:
        """The reported labels of each row, best first; ties keep label order (a stable sort, as
        Python's sorted() on each row)."""
        reported = np.asarray(self.reported, dtype=np.int64)
        return reported[np.argsort(-scores[:, reported], axis=1, kind="stable")]

    def _tags(self, scores: np.ndarray, ranked: np.ndarray | None,
              matched: np.ndarray | None = None) -> tuple[list[list[int]], np.ndarray]:
        """Each row's tags (in order) and the (N, L) mask of them."""
        if matched is not None and not matched.any():
            matched = None
        if self.taxonomy.mode == "single":
            paths = self._descend(scores)
            mask = np.zeros(scores.shape, dtype=bool)
            for row, path in enumerate(paths):
                mask[row, path] = True
            if matched is not None:  # known images fire their labels beside the path, best first
                for row in np.flatnonzero((matched & ~mask).any(axis=1)).tolist():
                    extra = np.flatnonzero(matched[row] & ~mask[row])
                    paths[row] += extra[np.argsort(-scores[row, extra], kind="stable")].tolist()
                mask |= matched
            return paths, mask
        fired = self._fired(scores, matched)
        keep = np.take_along_axis(fired, ranked, axis=1)  # type: ignore[arg-type]
        flat = ranked[keep].tolist()  # type: ignore[index]  # row by row, each row best first
        ends = np.cumsum(keep.sum(axis=1)).tolist()
        return [flat[start:end] for start, end in zip([0, *ends[:-1]], ends)], fired

    def _fired(self, scores: np.ndarray, matched: np.ndarray | None = None) -> np.ndarray:
        """Multi-label: every label over its threshold (or matched) whose parent fired too."""
        fired = (scores >= self.thresholds) & ~self.background
        if matched is not None:
            fired |= matched
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
        """Single-label: per level, the best of the current label's children (first best on ties),
        while it clears its threshold and the descent's confidence stop (:meth:`_step`)."""
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
                ok, best = self._step(scores[np.ix_(members, siblings_arr)], siblings_arr)
                for row, label in zip(members[ok].tolist(), best[ok].tolist()):
                    path[row].append(label)
                current[members[ok]] = best[ok]
                active[members[~ok]] = False
        return path


def _parent_indices(taxonomy: Taxonomy, labels: Sequence | None = None) -> list[int]:
    """Each label's parent index (-1 at the root), among ``labels`` (default: all of them)."""
    labels = taxonomy.labels if labels is None else labels
    index = {label.name: i for i, label in enumerate(labels)}
    return [index[label.parent] if label.parent is not None else -1 for label in labels]


class _FewShotPlan:
    """Which image set each prototype uses, and the taxonomy's method, for :meth:`TaxonomyClassifier.build`."""

    def __init__(self, scored: Sequence, image_sets: ImageSets | None, settings: FewShot, dim: int):
        self.method, self.settings = settings.method, settings
        self.sets: list[np.ndarray] = []
        self.label_sets = [self._add(image_sets, label.name, "examples", dim) for label in scored]
        self.counter_sets = [self._add(image_sets, label.name, "negative_examples", dim) for label in scored]

    def _add(self, image_sets: ImageSets | None, label: str, kind: str, dim: int) -> int:
        found = image_sets.get(label, kind) if image_sets is not None else None
        if found is None:
            return NEUTRAL
        if found.vectors.shape[1] != dim:
            raise ExamplesError(f"label {label!r}: its {kind.replace('_', ' ')} are {found.vectors.shape[1]}-d vectors, but "
                                f"this model's embeddings are {dim}-d: they were embedded with another model")
        self.sets.append(found.vectors)
        return len(self.sets) - 1

    def blend(self, text: np.ndarray, set_index: Sequence[int]) -> np.ndarray:
        """The ``blend`` method's prototypes (the text embeddings as they are for the other methods)."""
        if self.method != "blend" or not self.sets:
            return text
        return blend_prototypes(text, set_index, self.sets, self.settings.weight)

    def evidence(self, label_sets: Sequence[int], competitor_sets: Sequence[int]) -> ImageEvidence | None:
        """The ``centroid`` and ``cache`` methods' image evidence (None for ``blend``, or without sets)."""
        if self.method == "blend" or not self.sets:
            return None
        if self.method == "centroid":
            return ImageEvidence.centroid(self.sets, label_sets, competitor_sets, self.settings.weight)
        return ImageEvidence.cache(self.sets, label_sets, competitor_sets, self.settings.alpha, self.settings.beta)


def _known_images(taxonomy: Taxonomy, image_sets: ImageSets | None) -> KnownImages | None:
    """Every label's known images in one float32 matrix, filled set by set from the stored fp16
    rows (100,000 images at 512-d: 205 MB, and no second copy)."""
    found = [(i, label, image_sets.get(label.name, "known_images")) for i, label in enumerate(taxonomy.labels)
             if image_sets is not None and label.known_images]
    found = [(i, label, entry) for i, label, entry in found if entry is not None]
    if not found:
        return None
    dim = found[0][2].half.shape[1]
    if any(entry.half.shape[1] != dim for _, _, entry in found):
        raise ExamplesError(f"taxonomy {taxonomy.name!r}: its known images were embedded with different models")
    matrix = np.empty((sum(len(entry.names) for _, _, entry in found), dim), dtype=np.float32)
    ranges, names, start = [], [], 0
    for _, _, entry in found:
        block = matrix[start : start + len(entry.names)]
        np.copyto(block, entry.half, casting="unsafe")
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)  # as ImageSet.vectors does
        ranges.append((start, start + len(entry.names)))
        names.extend(entry.names)
        start += len(entry.names)
    thresholds = np.asarray([label.match_threshold for _, label, _ in found], dtype=np.float32)
    return KnownImages(matrix, [i for i, _, _ in found], ranges, names, thresholds)


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
