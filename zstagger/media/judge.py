"""Judging a stream of sampled frames: embedded and scored in small batches as they are
decoded, near-duplicates reusing the scores of the frame they repeat, stopping early once
a block label has fired on enough frames.

:func:`judge_frames` talks to the model and the taxonomy only through what it is handed:
``embed`` (pictures to unit vectors) and the taxonomy's compiled classifier (its ``score``
and ``tag_mask``), so it knows nothing of the Tagger. Decoding runs ahead in a thread of its
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
                 early_exit: int = 0, depth: int | None = None, keep_vectors: bool = False,
                 read_ahead_thread: bool = True) -> FrameScores:
    """Score every sampled frame of ``stream``; see the module's docstring. ``early_exit``: stop
    once a block label has fired on that many frames (0: never). ``embed``'s rows are scaled to
    unit length before scoring; ``keep_vectors``: they are kept too (fp16), for the embedding store.
    ``read_ahead_thread=False``: frames read in this thread (nothing to decode: a stored record)."""
    out = FrameScores()
    block = [i for i, s in enumerate(classifier.severity) if s == ACTION_SEVERITY["block"]]
    fired = np.zeros(len(classifier.names), dtype=np.int64)
    pending: list[Frame] = []
    waiting: list[tuple[float, int, int]] = []  # sampled frames not scored yet: (time, index into pending, frame number)
    last: np.ndarray | None = None

    def flush() -> bool:
        nonlocal fired
        if pending:
            embedded = np.asarray(embed([f.image for f in pending]), dtype=np.float32)
            if keep_vectors:
                out.vectors.append(embedded.astype("<f2"))
            batch = classifier.score(normalize(embedded))
            out.batches.append(batch)
            out.embedded += len(pending)
        b = len(out.batches) - 1
        rows = [(b, r) for _, r, _ in waiting]
        out.times.extend(t for t, _, _ in waiting)
        out.indices.extend(i for _, _, i in waiting)
        out.rows.extend(rows)
        if rows and early_exit and block:
            scored = out.batches[b]
            mask = classifier.tag_mask(scored.scores, scored.matched)
            picks = np.array([r for _, r in rows], dtype=np.int64)
            fired += mask[picks].sum(axis=0)
        pending.clear()
        waiting.clear()
        return bool(early_exit and block and (fired[block] >= early_exit).any())

    for frame in (read_ahead(stream, depth or batch_size) if read_ahead_thread else _closing(stream)):
        if last is not None and dedup > 0 and distance(frame.thumb, last) < dedup:
            if pending:
                waiting.append((frame.time, len(pending) - 1, frame.index))
            else:  # repeats a frame of the batch already scored
                out.times.append(frame.time)
                out.indices.append(frame.index)
                out.rows.append(out.rows[-1])
                if early_exit and block:
                    b, r = out.rows[-1]
                    fired += classifier.tag_mask(out.batches[b].scores[r:r + 1], out.batches[b].matched[r:r + 1])[0]
                    if (fired[block] >= early_exit).any():
                        out.stopped_early = True
                        break
            continue
        last = frame.thumb
        pending.append(frame)
        waiting.append((frame.time, len(pending) - 1, frame.index))
        if len(pending) >= batch_size and flush():
            out.stopped_early = True
            break
    else:
        flush()
    return out


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
