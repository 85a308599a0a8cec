"""Judging a stream of sampled frames: embedded and scored in small batches as they are
decoded, near-duplicates reusing the scores of the frame they repeat, stopping early once
a block label has fired on enough frames.

:func:`judge_frames` talks to the model and the taxonomy only through what it is handed:
``embed`` (pictures to unit vectors) and the taxonomy's compiled classifier (its ``score``
and ``tag_mask``), so it knows nothing of the Tagger. Several taxonomies are judged in one pass
(:func:`judge_frames_each`): each frame is decoded and embedded once. Decoding runs ahead in a thread of its
own (at most ``depth`` frames waiting), so decoding the next frames overlaps embedding these.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from ..engine.vectors import normalize
from ..taxonomy import ACTION_SEVERITY
from .frames import Frame, distance
from .streams import FrameStream

Embed = Callable[[Sequence[Image.Image]], np.ndarray]


@dataclass
class FrameScores:
    """Every sampled frame's scores (rows in time order) and what judging them found."""

    times: list[float] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)  # per sampled frame: its number among the frames decoded
    batches: list[Any] = field(default_factory=list)  # the classifier's BatchScores, one per embedded batch
    rows: list[tuple[int, int]] = field(default_factory=list)  # per sampled frame: (batch, row) of the frame it reuses or is
    vectors: list[np.ndarray] = field(default_factory=list)  # with ``keep_vectors``: per batch, its fp16 embeddings
    embedded: int = 0
    stopped_early: bool = False
    # (duration, frames decoded, truncated) when it stopped early: the stream's own figures
    # may have gone on for other taxonomies judged in the same pass.
    decoded: tuple[float | None, int, bool] | None = None

    def flat_rows(self) -> np.ndarray:
        """Per sampled frame, the row of the embedding it has or reuses, counted over all batches."""
        offsets = np.cumsum([0] + [len(b.scores) for b in self.batches])
        return np.array([offsets[b] + r for b, r in self.rows], dtype=np.int64)

    def matrix(self) -> Any:
        """One BatchScores with a row per sampled frame (reused rows repeated)."""
        first = self.batches[0]
        take = {name: np.concatenate([getattr(b, name) for b in self.batches]) for name in
                ("scores", "cosines", "matched", "match_rows", "match_cosines")}
        index = self.flat_rows()
        return replace(first, **{name: value[index] for name, value in take.items()})


def judge_frames(stream: FrameStream, classifier: Any, embed: Embed, *, batch_size: int = 8, dedup: float = 0.0,
                 early_exit: int = 0, depth: int | None = None, text: np.ndarray | None = None,
                 keep_vectors: bool = False, read_ahead_thread: bool = True) -> FrameScores:
    """Score every sampled frame of ``stream``; see the module's docstring. ``early_exit``: stop
    once a block label has fired on that many frames (0: never). ``text``: the media's own text
    (a unit embedding), fused with every frame as the taxonomy's ``text_fusion`` says. ``embed``'s
    rows are scaled to unit length before scoring; ``keep_vectors``: they are kept too (fp16), for
    the embedding store. ``read_ahead_thread=False``: frames read in this thread (nothing to
    decode: a stored record)."""
    return judge_frames_each(stream, [classifier], embed, batch_size=batch_size, dedup=dedup, early_exit=[early_exit],
                             depth=depth, text=text, keep_vectors=keep_vectors, read_ahead_thread=read_ahead_thread)[0]


class _Judge:
    """One classifier's side of :func:`judge_frames_each`: its scores, and when it stops."""

    def __init__(self, classifier: Any, early_exit: int, stream: FrameStream):
        self.classifier, self.early_exit, self.stream = classifier, early_exit, stream
        self.out = FrameScores()
        self.block = [i for i, s in enumerate(classifier.severity) if s == ACTION_SEVERITY["block"]]
        self.fired = np.zeros(len(classifier.names), dtype=np.int64)
        self.active = True

    @property
    def watching(self) -> bool:
        return bool(self.early_exit and self.block)

    def count(self, mask_rows: np.ndarray, final: bool = False) -> None:
        """Add tag masks of frames just judged; stop (not after the last frame) once a block label is due."""
        self.fired += mask_rows.sum(axis=0)
        if not final and (self.fired[self.block] >= self.early_exit).any():
            self.stop()

    def stop(self) -> None:
        # What was decoded when this classifier stopped: what a run with it alone reports
        # (unless decoding stops here too: then the stream's own figures at the end, as alone).
        self.active = False
        self.out.stopped_early = True
        self.out.decoded = (self.stream.duration, self.stream.frames_decoded, self.stream.truncated)


def judge_frames_each(stream: FrameStream, classifiers: Sequence[Any], embed: Embed, *, batch_size: int = 8,
                      dedup: float = 0.0, early_exit: Sequence[int] = (), depth: int | None = None,
                      text: np.ndarray | None = None, keep_vectors: bool = False,
                      read_ahead_thread: bool = True) -> list[FrameScores]:
    """:func:`judge_frames` for several taxonomies at once: each frame is decoded and embedded
    once, and scored by each classifier; each one stops (its ``early_exit``) when it would alone,
    and decoding stops when all have. Each one's :class:`FrameScores` is what it gets alone."""
    judges = [_Judge(c, early_exit[k] if k < len(early_exit) else 0, stream) for k, c in enumerate(classifiers)]
    pending: list[Frame] = []
    waiting: list[tuple[float, int, int]] = []  # sampled frames not scored yet: (time, index into pending, frame number)
    last: np.ndarray | None = None
    last_to_stop: list[_Judge] = []  # those whose stop ended decoding: the stream's figures are theirs

    def score(judge: _Judge, vectors: np.ndarray) -> Any:
        if text is None:
            return judge.classifier.score(vectors)
        from ..engine.scoring import InputTexts

        return judge.classifier.score(vectors, InputTexts.every_row(len(vectors), text))

    def flush(final: bool = False) -> bool:
        """Score the pending frames; True once every classifier has stopped."""
        live = [j for j in judges if j.active]
        if pending and live:
            embedded = np.asarray(embed([f.image for f in pending]), dtype=np.float32)
            vectors = normalize(embedded)
            kept = embedded.astype("<f2") if keep_vectors else None
            for judge in live:
                judge.out.batches.append(score(judge, vectors))
                judge.out.embedded += len(pending)
                if kept is not None:
                    judge.out.vectors.append(kept)
        for judge in live:
            out = judge.out
            b = len(out.batches) - 1
            rows = [(b, r) for _, r, _ in waiting]
            out.times.extend(t for t, _, _ in waiting)
            out.indices.extend(i for _, _, i in waiting)
            out.rows.extend(rows)
            if rows and judge.watching:
                scored = out.batches[b]
                mask = judge.classifier.tag_mask(scored.scores, scored.matched)
                judge.count(mask[np.array([r for _, r in rows], dtype=np.int64)], final)
        pending.clear()
        waiting.clear()
        return not any(j.active for j in judges)

    for frame in (read_ahead(stream, depth or batch_size) if read_ahead_thread else _closing(stream)):
        if last is not None and dedup > 0 and distance(frame.thumb, last) < dedup:
            if pending:
                waiting.append((frame.time, len(pending) - 1, frame.index))
                continue
            was_active = [j for j in judges if j.active]
            for judge in judges:  # repeats a frame of the batch already scored
                if not judge.active:
                    continue
                out = judge.out
                out.times.append(frame.time)
                out.indices.append(frame.index)
                out.rows.append(out.rows[-1])
                if judge.watching:
                    b, r = out.rows[-1]
                    judge.count(judge.classifier.tag_mask(out.batches[b].scores[r:r + 1], out.batches[b].matched[r:r + 1]))
            if not any(j.active for j in judges):
                last_to_stop = was_active
                break
            continue
        last = frame.thumb
        pending.append(frame)
        waiting.append((frame.time, len(pending) - 1, frame.index))
        if len(pending) >= batch_size:
            was_active = [j for j in judges if j.active]
            if flush():
                last_to_stop = was_active
                break
    else:
        flush(final=True)
        last_to_stop = []
    for judge in last_to_stop:
        judge.out.decoded = None
    return [judge.out for judge in judges]


def _closing(stream: FrameStream) -> Iterator[Frame]:
    try:
        yield from stream
    finally:
        stream.close()


def read_ahead(stream: FrameStream, depth: int) -> Iterator[Frame]:
    """``stream``'s frames, decoded in a thread of its own at most ``depth`` ahead of the
    consumer; leaving the loop stops the decoder (and closes it, in its own thread)."""
    items: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def decode() -> None:
        try:
            for frame in stream:
                if not put(frame):
                    break
            else:
                put(done)
        except BaseException as exc:  # noqa: BLE001 (handed to the consumer, which raises it)
            put(exc)
        finally:
            stream.close()

    worker = threading.Thread(target=decode, name="zstagger-media-decode", daemon=True)
    worker.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()
