"""An iterable of images through loader threads and encoder lanes, in input order.

The scheduler only. What runs in each stage is a :class:`Stages` object, the stage
contract kept apart from scheduling (as infinity keeps ``encode_pre``/``encode_core``/
``encode_post`` apart from its batch handler):

- ``prepare(item)`` (encode_pre) runs in a loader thread for one input: read, look up,
  decode, preprocess. It returns the prepared item, or the ImageLoadError that input met
  (it never raises for one input's own problem), or a :class:`SetAside` for an input the
  caller judges another way (an animation or video, over its frames);
- ``embed(prepared)`` (encode_core) runs in an encoder lane on one batch of prepared items
  and returns one vector per prepared item, in order;
- encode_post, turning vectors into results, is the caller's: :meth:`Pipeline.run` yields
  each batch's inputs, vectors and errors, in input order.

The embedder's stages (:class:`zstagger.embedder.EmbedStages`) are what this schedules for a
stream and what the HTTP service's micro-batcher (:mod:`zstagger.service.batching`)
schedules across requests. The boundary is one input in, its prepared item out, vectors
from a batch of prepared items, so that a stage which makes several items of one input
(frames of a video) can be scheduled the same way.

Up to ``lanes`` batches are encoded at once while the loader threads prepare the next ones.
:meth:`Pipeline.close` drops loads not started before it waits for the lanes, so an
interrupted run (Ctrl-C) stops in about one image's time, not a prefetch's. Imports
nothing above errors.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from .errors import ImageLoadError

#: Batches loaded ahead of the encoder lanes, beyond one per lane.
PREFETCH_BATCHES = 2

Item = TypeVar("Item")
Ready = TypeVar("Ready")
Item_contra = TypeVar("Item_contra", contravariant=True)

class SetAside:
    """What ``prepare`` returns for an input the stages leave to the caller instead of
    embedding it (an animation or video, judged over its frames): it takes the input's place
    among the batch's errors, with no vector. ``value``: what the caller needs to judge it;
    ``order``: the input's place in its stream (when numbered); ``keep``: where the caller hands
    what it wants recorded of it, in the stream's order (set by the stream that records)."""

    __slots__ = ("keep", "order", "value")

    def __init__(self, value: Any, order: int | None = None):
        self.value = value
        self.order = order
        self.keep: Any = None


#: One batch: its inputs, a vector for each input whose error is None (None when none could
#: be prepared), and each input's error (or :class:`SetAside`) or None.
Batch = tuple[list[Item], "np.ndarray | None", list["ImageLoadError | None"]]


class Stages(Protocol[Item_contra]):
    """The two stages a scheduler runs (see the module docstring)."""

    def prepare(self, item: Item_contra) -> Any:
        """One input, prepared (in a loader thread), or the ImageLoadError it met."""
        ...

    def embed(self, ready: Sequence[Any]) -> np.ndarray:
        """One vector per prepared item, in order (in an encoder lane)."""
        ...


class Pipeline(Generic[Item]):
    """Loader threads and encoder lanes, started at first use and stopped by :meth:`close`.

    ``lanes()`` is asked when the threads start (a model loaded later may plan its own).
    """

    def __init__(self, loader_threads: int, lanes: Callable[[], int]):
        self.loader_threads = loader_threads
        self._lanes = lanes
        self._lock = threading.Lock()
        self._loader: ThreadPoolExecutor | None = None
        self._encoders: ThreadPoolExecutor | None = None

    def run(self, items: Iterable[Item], stages: Stages[Item], batch_size: int) -> Iterator[Batch]:
        """Prepare and embed ``items`` in batches of ``batch_size``, keeping every stage busy;
        yields each batch when done, in input order."""
        loader, encoders = self._pools()
        source = iter(items)
        batches = iter(lambda: list(islice(source, batch_size)), [])
        in_flight: deque[Future] = deque()

        def submit_next() -> None:
            batch = next(batches, None)
            if batch:
                loads = [(item, loader.submit(stages.prepare, item)) for item in batch]
                in_flight.append(encoders.submit(_embed_batch, stages, loads))

        for _ in range(self._lanes() + PREFETCH_BATCHES - 1):
            submit_next()
        while in_flight:
            done = in_flight.popleft()
            submit_next()
            yield done.result()

    def map(self, step: Callable[[Item], Any], items: Iterable[Item]) -> list:
        """``step`` over ``items`` in the loader threads only, results in input order."""
        loader, _ = self._pools()
        return list(loader.map(step, items))

    def _pools(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        with self._lock:
            if self._loader is None:
                self._loader = ThreadPoolExecutor(self.loader_threads, thread_name_prefix="zstagger-load")
                self._encoders = ThreadPoolExecutor(self._lanes(), thread_name_prefix="zstagger-encode")
            return self._loader, self._encoders  # type: ignore[return-value]

    def close(self) -> None:
        with self._lock:
            loader, encoders = self._loader, self._encoders
            self._loader = self._encoders = None
        # Loads not started are dropped first: the encoder tasks waiting on them then end at
        # once, so an interrupted run stops in about one image's time, not a prefetch's.
        if loader is not None:
            loader.shutdown(wait=False, cancel_futures=True)
        if encoders is not None:
            encoders.shutdown(wait=True, cancel_futures=True)
        if loader is not None:
            loader.shutdown(wait=True)


def _embed_batch(stages: Stages[Item], loads: list[tuple[Item, Future]]) -> Batch:
    """In an encoder lane: wait for the batch's loads, then embed the ones that are ready."""
    items, errors, ready = [], [], []
    for item, future in loads:
        prepared = future.result()
        items.append(item)
        aside = isinstance(prepared, (ImageLoadError, SetAside))
        errors.append(prepared if aside else None)
        if not aside:
            ready.append(prepared)
    return items, (stages.embed(ready) if ready else None), errors
