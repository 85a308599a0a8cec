"""What a policy change would flip: two taxonomies applied to the same stored embeddings.

Both are scored with the Tagger's own classifiers (the rules ``zstagger tag`` applies),
a page of stored images at a time, as arrays: tags compared by label name (a label
only one taxonomy has counts as never firing in the other), verdicts compared by
severity. The result is a :class:`PolicyDiff`: how many images change tags or verdict,
the verdict transition matrix, per label how many images it newly tags or no longer
tags, and the first few images of each change (for the report's thumbnails).

Animations and videos are judged again from the frames the store kept of them (their
aggregated tags and verdict, as ``zstagger tag`` gives them); one that either taxonomy
cannot judge without decoding (see :mod:`.media`) is left out and counted in ``media_incomplete``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

from ..taxonomy import ACTION_SEVERITY, Taxonomy
from .selection import Catalogue

ACTIONS = sorted(ACTION_SEVERITY, key=ACTION_SEVERITY.__getitem__)  # allow, review, block
SAMPLES = 8


class LabelChange(BaseModel):
    label: str
    in_old: bool
    in_new: bool
    old_tagged: int  # images the old taxonomy tags with it
    new_tagged: int
    newly_tagged: int  # tagged under the new taxonomy, not under the old
    no_longer_tagged: int


class Transition(BaseModel):
    old: str
    new: str
    count: int


class Sample(BaseModel):
    image: str
    old_tags: list[str]
    new_tags: list[str]
    old_verdict: str | None
    new_verdict: str | None


class PolicyDiff(BaseModel):
    old: str  # name@version
    new: str
    model: str
    model_fingerprint: str
    preprocessing: str
    store: str
    images: int
    changed_tags: int  # images whose set of tags differs
    changed_verdict: int
    media_incomplete: int = 0  # animations and videos left out: one taxonomy would judge frames the store does not keep
    verdict_actions: list[str] | None = None  # rows and columns of verdict_table (None: a taxonomy without actions)
    verdict_table: list[list[int]] | None = None  # [old verdict][new verdict] image counts
    transitions: list[Transition] = []  # the off-diagonal cells, most images first
    labels: list[LabelChange] = []  # labels that change first, most images first
    samples: dict[str, list[Sample]] = {}  # "allow -> block", "+firearms" (newly tagged), "-firearms" (no longer)
    report_dir: str | None = None
    seconds: float = 0.0


def diff_policies(catalogue: Catalogue, old: Taxonomy, new: Taxonomy, samples: int = SAMPLES, page: int = 10_000,
                  progress: Callable[[int], object] | None = None) -> PolicyDiff:
    """Score every selected stored image with ``old`` and ``new``; see :class:`PolicyDiff`.
    ``progress(n)`` is told the number of images done per page."""
    started = time.perf_counter()
    tagger = catalogue.tagger
    before, after = tagger.classifier(old), tagger.classifier(new)
    union = list(dict.fromkeys([before.names[i] for i in before.reported] + [after.names[i] for i in after.reported]))
    position = {name: u for u, name in enumerate(union)}
    old_columns = ([i for i in before.reported], [position[before.names[i]] for i in before.reported])
    new_columns = ([i for i in after.reported], [position[after.names[i]] for i in after.reported])
    verdicts = before.has_actions and after.has_actions

    images = changed_tags = changed_verdict = media_incomplete = 0
    old_tagged = np.zeros(len(union), dtype=np.int64)
    new_tagged = np.zeros(len(union), dtype=np.int64)
    newly = np.zeros(len(union), dtype=np.int64)
    gone = np.zeros(len(union), dtype=np.int64)
    table = np.zeros((len(ACTIONS), len(ACTIONS)), dtype=np.int64)
    kept: dict[str, list[Sample]] = {}

    for batch, embeds in catalogue.pages(page):
        rows = len(batch.references)
        old_scored, new_scored = before.score(embeds), after.score(embeds)  # known images fire their labels too
        old_raw = before.tag_mask(old_scored.scores, old_scored.matched)
        new_raw = after.tag_mask(new_scored.scores, new_scored.matched)
        old_mask = np.zeros((rows, len(union)), dtype=bool)
        new_mask = np.zeros((rows, len(union)), dtype=bool)
        undecided = np.zeros(rows, dtype=bool)
        for n, record in batch.media.items():  # judged again from the frames the store kept
            for taxonomy, compiled, raw in ((old, before, old_raw), (new, after, new_raw)):
                judged = tagger.rejudge_media(record, batch.references[n], taxonomy)
                if judged is None:
                    undecided[n] = True
                else:
                    raw[n] = [name in judged.tags for name in compiled.names]
        old_mask[:, old_columns[1]] = old_raw[:, old_columns[0]]
        new_mask[:, new_columns[1]] = new_raw[:, new_columns[0]]
        old_sev = before.severities(old_raw) if verdicts else np.zeros(rows, dtype=np.int64)
        new_sev = after.severities(new_raw) if verdicts else np.zeros(rows, dtype=np.int64)
        if undecided.any():  # a medium one of the two cannot judge without decoding: counted apart
            media_incomplete += int(undecided.sum())
            keep = ~undecided
            rows, old_mask, new_mask, old_sev, new_sev = int(keep.sum()), old_mask[keep], new_mask[keep], old_sev[keep], new_sev[keep]
            references = [r for r, k in zip(batch.references, keep) if k]
        else:
            references = batch.references

        images += rows
        changed_tags += int((old_mask != new_mask).any(axis=1).sum())
        changed_verdict += int((old_sev != new_sev).sum())
        np.add.at(table, (old_sev, new_sev), 1)
        if progress is not None:
            progress(rows + int(undecided.sum()))
        old_tagged += old_mask.sum(axis=0)
        new_tagged += new_mask.sum(axis=0)
        newly += (new_mask & ~old_mask).sum(axis=0)
        gone += (old_mask & ~new_mask).sum(axis=0)

        if samples:
            page_samples = _PageSamples(kept, samples, references, union, old_mask, new_mask,
                                        old_sev if verdicts else None, new_sev if verdicts else None)
            if verdicts:
                for a in range(len(ACTIONS)):
                    for b in range(len(ACTIONS)):
                        if a != b:
                            page_samples.add(f"{ACTIONS[a]} -> {ACTIONS[b]}", (old_sev == a) & (new_sev == b))
            for u, name in enumerate(union):
                page_samples.add(f"+{name}", new_mask[:, u] & ~old_mask[:, u])
                page_samples.add(f"-{name}", old_mask[:, u] & ~new_mask[:, u])

    labels = [LabelChange(label=name, in_old=name in before.names, in_new=name in after.names,
                          old_tagged=int(old_tagged[u]), new_tagged=int(new_tagged[u]), newly_tagged=int(newly[u]),
                          no_longer_tagged=int(gone[u])) for u, name in enumerate(union)]
    labels.sort(key=lambda c: -(c.newly_tagged + c.no_longer_tagged))
    transitions = sorted((Transition(old=ACTIONS[a], new=ACTIONS[b], count=int(table[a, b]))
                          for a in range(len(ACTIONS)) for b in range(len(ACTIONS)) if a != b and table[a, b]),
                         key=lambda t: -t.count)
    return PolicyDiff(
        old=f"{old.name}@{old.version}", new=f"{new.name}@{new.version}", model=tagger.model_name,
        model_fingerprint=catalogue.model.fingerprint, preprocessing=catalogue.model.mode, store=catalogue.store.where,
        images=images, changed_tags=changed_tags, changed_verdict=changed_verdict, media_incomplete=media_incomplete,
        verdict_actions=ACTIONS if verdicts else None, verdict_table=table.tolist() if verdicts else None,
        transitions=transitions, labels=labels, samples=kept, seconds=round(time.perf_counter() - started, 3),
    )


@dataclass
class _PageSamples:
    """Keeps the first images of each kind of change, page after page."""

    kept: dict[str, list[Sample]]
    limit: int
    references: list[str]
    union: list[str]
    old_mask: np.ndarray
    new_mask: np.ndarray
    old_sev: np.ndarray | None
    new_sev: np.ndarray | None

    def add(self, key: str, which: np.ndarray) -> None:
        room = self.limit - len(self.kept.get(key, []))
        for r in np.flatnonzero(which)[: max(0, room)].tolist():
            self.kept.setdefault(key, []).append(Sample(
                image=self.references[r],
                old_tags=[self.union[u] for u in np.flatnonzero(self.old_mask[r])],
                new_tags=[self.union[u] for u in np.flatnonzero(self.new_mask[r])],
                old_verdict=ACTIONS[self.old_sev[r]] if self.old_sev is not None else None,
                new_verdict=ACTIONS[self.new_sev[r]] if self.new_sev is not None else None,
            ))
