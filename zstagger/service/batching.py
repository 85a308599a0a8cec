"""Micro-batching: images from concurrent requests share model batches.

The scheduler the HTTP service puts in front of the embedder: the same two stages as a
stream's pipeline (:class:`zstagger.pipeline.Stages`: ``prepare`` one image, ``embed`` one
batch), scheduled across requests instead of along one stream.

Each request's images are read and preprocessed in a thread pool as soon as they arrive
(network reads and JPEG decoding overlap with the model); ready images wait in one queue.
One encoder thread per lane takes up to ``batch_size`` of them, waiting at most
``max_wait`` after the first one for more, and runs one forward pass. So 32 clients with
one image each cost about one 32-image batch, and a lone request waits only ``max_wait``.

Backpressure: at most ``max_pending`` images are admitted at once (decoding, waiting or
encoding); a request that would pass that is refused (the caller answers 503 with
``Retry-After``), so memory stays bounded under any load. An animation or video is admitted
as one input, then each batch of its frames as as many images while it is embedded
(:meth:`MicroBatcher.frames`, waiting for room rather than refusing), so a long video costs
the service its sampled frames, a batch at a time, and cannot crowd images out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


from ..errors import ImageLoadError
from ..images import ImageInput
from ..pipeline import SetAside, Stages

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """More images are in flight than ``max_pending`` allows."""


@dataclass
class _Item:
    prepared: object  # what ``stages.prepare`` returned: pixels to encode (or an embedding from a cache)
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    queued_at: float = field(default_factory=time.monotonic)


def _deliver(future: asyncio.Future, value=None, error: BaseException | None = None) -> None:
    if future.done():  # the request went away (client disconnected)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class MicroBatcher:
    """Gathers preprocessed images from any number of requests into model batches.

    ``stages.prepare(ref)`` returns what ``stages.embed`` takes, or an ImageLoadError (it
    never raises for one image's problem); ``stages.embed(prepared)`` embeds a list of them
    in one forward pass and returns one row per image (:meth:`zstagger.Tagger.stages`).
    """

    def __init__(
        self,
        stages: Stages[ImageInput],
        *,
        batch_size: int,
        max_wait: float,
        max_pending: int,
        lanes: int,
        loader_threads: int,
        observe: Callable[[int, float], None] = lambda size, wait: None,
        on_frames: Callable[[int], None] | None = None,
    ):
        self.stages = stages
        self.batch_size, self.max_wait, self.max_pending = batch_size, max_wait, max_pending
        self.observe = observe
        self.on_frames = on_frames  # told how many media frames each admitted batch holds
        self._decoders = ThreadPoolExecutor(loader_threads, thread_name_prefix="zstagger-http-load")
        self._queue: deque[_Item] = deque()
        self._ready = threading.Condition()
        self._admitted = 0
        self._admit_lock = threading.Lock()
        self._closed = False
        self._lanes = [threading.Thread(target=self._run_lane, name=f"zstagger-http-encode-{i}", daemon=True)
                       for i in range(lanes)]
        for lane in self._lanes:
            lane.start()

    # -- admission ------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self._admitted

    def admit(self, count: int) -> None:
        """Reserve room for ``count`` images, or raise :class:`Overloaded`."""
        with self._admit_lock:
            if self._admitted + count > self.max_pending:
                raise Overloaded(f"{self._admitted} images in flight, limit {self.max_pending}")
            self._admitted += count

    def release(self, count: int) -> None:
        with self._admit_lock:
            self._admitted -= count

    @contextlib.contextmanager
    def frames(self, count: int, patience: float) -> Iterator[None]:
        """Room for ``count`` frames of an animation or video while they are embedded: each batch
        of frames counts against ``max_pending`` like as many images, so a long video takes its
        share of the service, one batch at a time, and never holds more. Waits up to ``patience``
        seconds for room, then the medium's result is a transient ``overloaded`` error record."""
        count = min(count, self.max_pending)  # a batch larger than the whole limit still fits an idle server
        deadline = time.monotonic() + patience
        while True:
            try:
                self.admit(count)
                break
            except Overloaded:
                if time.monotonic() >= deadline:
                    raise ImageLoadError("overloaded", f"the server stayed busy for {patience:g} s while judging this "
                                         "medium's frames (ZSTAGGER_MAX_PENDING_IMAGES); retry shortly",
                                         transient=True) from None
                time.sleep(0.02)
        if self.on_frames is not None:
            self.on_frames(count)
        try:
            yield
        finally:
            self.release(count)

    # -- embedding ----------------------------------------------------------------------

    async def embed(self, refs: Sequence[ImageInput]) -> tuple[list, list[ImageLoadError | None]]:
        """One embedding row (or None) and one error (or None) per ref, in order."""
        loop = asyncio.get_running_loop()
        prepared = await asyncio.gather(*(loop.run_in_executor(self._decoders, self.stages.prepare, ref) for ref in refs))
        futures: list[asyncio.Future | None] = []
        items = []
        for ready in prepared:
            if isinstance(ready, (ImageLoadError, SetAside)):  # media are judged over their frames, not batched here
                futures.append(None)
                continue
            future = loop.create_future()
            futures.append(future)
            items.append(_Item(ready, future, loop))
        with self._ready:
            self._queue.extend(items)
            self._ready.notify(len(items))
        rows = []
        for future in futures:
            rows.append(await future if future is not None else None)
        return rows, [p if isinstance(p, (ImageLoadError, SetAside)) else None for p in prepared]

    def _take_batch(self) -> list[_Item] | None:
        with self._ready:
            while not self._queue and not self._closed:
                self._ready.wait()
            if self._closed:
                return None
            batch = [self._queue.popleft()]
            deadline = batch[0].queued_at + self.max_wait
            while len(batch) < self.batch_size:
                if self._queue:
                    batch.append(self._queue.popleft())
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._ready.wait(left)
            return batch

    def _run_lane(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            started = time.monotonic()
            self.observe(len(batch), started - min(item.queued_at for item in batch))
            try:
                rows = self.stages.embed([item.prepared for item in batch])
            except Exception as exc:  # a failed forward fails these requests, not the lane
                log.exception("zstagger: a batch of %d failed to encode", len(batch))
                for item in batch:
                    item.loop.call_soon_threadsafe(_deliver, item.future, None, exc)
                continue
            for item, row in zip(batch, rows):
                item.loop.call_soon_threadsafe(_deliver, item.future, row)

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        for lane in self._lanes:
            lane.join(timeout=30)
        self._decoders.shutdown(wait=False, cancel_futures=True)
