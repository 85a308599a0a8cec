"""A labelled dataset run through a tagger: every label's score per readable image, and the truth.

Eval and calibrate both start here. Image embeddings come from the image-embedding cache
when the tagger has one, so scoring a dataset a second time reads no pixels and runs
no model. Unreadable images are kept aside with their error records, never dropped silently.

An animation or video is one item, one row: its sampled frames (every one: no early exit)
aggregated per label by the taxonomy's ``media`` policy, exactly the scores its tags and
verdict come from when it is tagged. Figures and thresholds are therefore per media item, not
per frame: a threshold chosen for a target precision holds per video.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import chain
from typing import Any

import numpy as np

from ..classifier import TaxonomyClassifier
from ..errors import DatasetError, ImageLoadError
from ..pipeline import SetAside
from ..tagger import Tagger
from ..taxonomy import Taxonomy
from .datasets import LabelledDataset, LabelledImage
from .facets import facet_outcomes, joined, scored_facets
from .models import UnreadableImage

UNREADABLE_SHOWN = 10


@dataclass
class ScoredDataset:
    taxonomy: Taxonomy
    classifier: TaxonomyClassifier
    items: list[LabelledImage]  # the readable images, in dataset order
    truth: np.ndarray  # (N, L) bool over taxonomy.labels; ancestors of a true label are true too
    scores: np.ndarray  # (N, L) float64
    tagged: list[list[int]]  # label indices that became tags (thresholds applied)
    verdicts: list[str | None]
    unreadable: list[UnreadableImage] = field(default_factory=list)
    cache_hits: int = 0
    cache_misses: int = 0
    embeddings: np.ndarray | None = None  # (N, D) unit image embeddings (for choosing few-shot examples)
    matched: np.ndarray | None = None  # (N, L) bool: known-image matches
    facets: list = field(default_factory=list)  # one ScoredFacet (:mod:`.facets`) per facet of the taxonomy
    media: dict[str, int] = field(default_factory=dict)  # animations and videos among the items, by kind (one row each)
    texts: Any = None  # the items' text embeddings (InputTexts) once fused (:func:`with_text`), for rescoring
    stills: np.ndarray | None = None  # (N,) bool with embeddings kept: rows that are stills (media: zeros)

    @property
    def names(self) -> list[str]:
        return [label.name for label in self.taxonomy.labels]

    def predicted(self) -> np.ndarray:
        """(N, L) bool: which labels became tags."""
        out = np.zeros_like(self.truth)
        lengths = np.fromiter(map(len, self.tagged), dtype=np.int64, count=len(self.tagged))
        columns = np.fromiter(chain.from_iterable(self.tagged), dtype=np.int64, count=int(lengths.sum()))
        out[np.repeat(np.arange(len(lengths)), lengths), columns] = True
        return out


def truth_matrix(items: list[LabelledImage], taxonomy: Taxonomy) -> np.ndarray:
    """(N, L) bool: each image's true labels and their ancestors (one row per distinct label set, looked up)."""
    index = {label.name: i for i, label in enumerate(taxonomy.labels)}
    sets: dict[tuple[str, ...], int] = {}
    which = np.fromiter((sets.setdefault(item.labels, len(sets)) for item in items), dtype=np.int64, count=len(items))
    table = np.zeros((len(sets), len(index)), dtype=bool)
    for labels, row in sets.items():
        for name in labels:
            table[row, [index[n] for n in taxonomy.path_of(name)]] = True
    return table[which] if len(items) else np.zeros((0, len(index)), dtype=bool)


def score_dataset(
    dataset: LabelledDataset, taxonomy: Taxonomy, tagger: Tagger, progress: Callable[[int], None] | None = None,
    keep_embeddings: bool = False, for_text: bool = False,
) -> ScoredDataset:
    """Embed (or fetch from the cache) and score every image of ``dataset`` against ``taxonomy``.

    Each batch is scored as it comes, so memory holds the scores, not the embeddings (a
    million 512-d embeddings are 2 GB); ``keep_embeddings`` keeps them too (few-shot examples
    are picked from them: stills only). ``for_text``: kept to fuse the items' text afterwards
    (:func:`with_text`); an animation or video gets a row of zeros there, and ``stills`` says
    which rows are real (media keep their image-only scores)."""
    compiled = tagger.classifier(taxonomy)
    before = tagger.cache_stats()
    count = len(taxonomy.labels)
    rows: list[int] = []  # dataset positions of the readable images, in order
    scores = np.zeros((len(dataset.items), count))  # filled a batch at a time; rows of unreadable images are cut off
    matched = np.zeros((len(dataset.items), count), dtype=bool)
    tagged: list[list[int]] = []
    vectors, unreadable, facet_parts = [], [], []
    media: dict[str, int] = {}
    position = 0
    for refs, embeds, errors in tagger.embed_batches((item.ref for item in dataset.items), media=True):
        images = compiled.score(embeds) if embeds is not None else None
        batch_scores, batch_matched, next_image = [], [], 0
        stills: list[bool] = []  # per scored row of the batch: a still (not an animation or video)
        for offset, error in enumerate(errors):
            item = dataset.items[position + offset]
            if isinstance(error, SetAside):  # an animation or video: one row, its frames aggregated
                if keep_embeddings:  # (few-shot examples)
                    raise DatasetError(f"{dataset.source}: {item.ref} is an animation or video; example images are "
                                       "picked from stills: calibrate this dataset without --examples")
                try:
                    one = tagger.media_scores(error.value, taxonomy)
                except ImageLoadError as exc:
                    unreadable.append(UnreadableImage(image=item.ref, type=exc.kind, message=exc.message))
                    continue
                media[error.value.kind] = media.get(error.value.kind, 0) + 1
                batch_scores.append(one.scores[0])
                batch_matched.append(one.matched[0])
                stills.append(False)
            elif error is None:
                batch_scores.append(images.scores[next_image])  # type: ignore[union-attr]
                batch_matched.append(images.matched[next_image])  # type: ignore[union-attr]
                next_image += 1
                stills.append(True)
            else:
                unreadable.append(UnreadableImage(image=item.ref, type=error.kind, message=error.message))
                continue
            rows.append(position + offset)
        if batch_scores:
            done = len(tagged)
            block, hits = np.asarray(batch_scores), np.asarray(batch_matched, dtype=bool)
            scores[done:done + len(block)], matched[done:done + len(block)] = block, hits
            batch_tags = compiled.tag_rows(block, hits)
            tagged += batch_tags
            if compiled.facets:
                facet_parts.append(facet_outcomes(compiled, embeds, batch_tags, stills))
        if (keep_embeddings or for_text) and batch_scores:
            vectors.append((np.asarray(embeds, dtype=np.float32) if embeds is not None else None, stills))
        position += len(refs)
        if progress is not None:
            progress(len(refs))
    after = tagger.cache_stats()
    items = [dataset.items[row] for row in rows]
    if len(items) < len(scores):
        scores, matched = scores[:len(items)].copy(), matched[:len(items)].copy()
    embeddings, still_rows = _aligned(vectors)
    return ScoredDataset(
        taxonomy=taxonomy, classifier=compiled, items=items, truth=truth_matrix(items, taxonomy), scores=scores,
        tagged=tagged, verdicts=[compiled.verdict(t) for t in tagged], unreadable=unreadable,
        cache_hits=after["hits"] - before["hits"], cache_misses=after["misses"] - before["misses"],
        embeddings=embeddings, stills=still_rows, matched=matched, media=media,
        facets=scored_facets(compiled, joined(facet_parts, len(compiled.facets)), items),
    )


def _aligned(parts: list[tuple[np.ndarray | None, list[bool]]]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Each batch's still embeddings with a row of zeros where an animation or video sits, and
    which rows are stills; (None, None) when nothing was kept or no still was embedded."""
    dim = next((e.shape[1] for e, _ in parts if e is not None), None)
    if dim is None:
        return None, None
    blocks = []
    for embeds, stills in parts:
        block = np.zeros((len(stills), dim), dtype=np.float32)
        if embeds is not None:
            block[np.asarray(stills, dtype=bool)] = embeds
        blocks.append(block)
    return np.concatenate(blocks), np.concatenate([np.asarray(st, dtype=bool) for _, st in parts])


def _keep_media_rows(scored: ScoredDataset, scores: np.ndarray, matched: np.ndarray) -> None:
    """Animations and videos keep their own (aggregated, image-only) scores where rows were
    scored again from embeddings (theirs is a row of zeros)."""
    if scored.stills is not None and not scored.stills.all():
        media = ~scored.stills
        scores[media] = scored.scores[media]
        if scored.matched is not None:
            matched[media] = scored.matched[media]


def rescore(scored: ScoredDataset, compiled: TaxonomyClassifier) -> ScoredDataset:
    """The same images scored by another compiled taxonomy (with examples, say), from their embeddings."""
    count = len(compiled.taxonomy.labels)
    if scored.embeddings is None:
        scores, matched = np.zeros((0, count)), np.zeros((0, count), dtype=bool)
    else:
        # (fused with the items' text as they were, when the taxonomy fuses text)
        batch = compiled.score(scored.embeddings, scored.texts if compiled.taxonomy.text_fusion is not None else None)
        scores, matched = batch.scores, batch.matched
        _keep_media_rows(scored, scores, matched)
    tagged = compiled.tag_rows(scores, matched) if len(scores) else []
    facets = scored.facets
    if compiled.facets and scored.embeddings is not None:
        facets = scored_facets(compiled, facet_outcomes(compiled, scored.embeddings, tagged), scored.items)
    return replace(scored, taxonomy=compiled.taxonomy, classifier=compiled, scores=scores, matched=matched, tagged=tagged,
                   verdicts=[compiled.verdict(t) for t in tagged], facets=facets)


def with_text(scored: ScoredDataset, taxonomy: Taxonomy, tagger: Tagger) -> tuple[ScoredDataset, int]:
    """The same images scored again with their text fused (``taxonomy``'s ``text_fusion``), from
    their embeddings (``keep_embeddings``); images without text keep their image-only scores.
    Returns it and how many images had text."""
    from ..engine.scoring import InputTexts

    compiled = tagger.classifier(taxonomy)
    rows = [i for i, item in enumerate(scored.items)
            if item.text is not None and (scored.stills is None or scored.stills[i])]  # (media: image only)
    texts = InputTexts(np.asarray(rows, dtype=np.int64), tagger.text_embeddings([scored.items[i].text for i in rows])) \
        if rows else None
    if scored.embeddings is None:
        return replace(scored, taxonomy=taxonomy, classifier=compiled), 0
    batch = compiled.score(scored.embeddings, texts)
    _keep_media_rows(scored, batch.scores, batch.matched)
    tagged = compiled.tag_rows(batch.scores, batch.matched)
    facets = scored.facets
    if compiled.facets:  # facets apply under the categories tagged: those with the text fused
        stills = scored.stills if scored.stills is not None else np.ones(len(tagged), dtype=bool)
        outcomes = facet_outcomes(compiled, scored.embeddings[stills], tagged, stills.tolist())
        facets = scored_facets(compiled, outcomes, scored.items)
    return replace(scored, taxonomy=taxonomy, classifier=compiled, scores=batch.scores, matched=batch.matched, tagged=tagged,
                   verdicts=[compiled.verdict(t) for t in tagged], texts=texts, facets=facets), len(rows)
