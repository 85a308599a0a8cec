"""A job's result sink, fed chunk by chunk: a chunk's file holds every stored result of its inputs.

A chunk is named by the first and last input it was enqueued with (its *origin*), which its
retries, hand-backs and a long video's time ranges carry along. Whoever stores results of a
chunk's inputs writes the chunk's file again with all of them that are stored, so a chunk is
one file whatever happened to its inputs, and the last write holds everything: each writer
reads after its own results are stored, and writes again if more came in meanwhile.

A write that still fails after :func:`~zstagger.sinks.deliver_chunk`'s quick attempts is
recorded on the job (``status`` shows the chunks not delivered and the last error) and sent
round as a ``deliver_sink`` task with backoff, up to ``ZSTAGGER_SINK_MAX_ATTEMPTS`` deliveries,
acknowledged late like every task (a worker killed mid-delivery leaves it to another).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import redis

from ..errors import SinkError
from ..settings import Settings
from ..sinks import chunk_name, deliver_chunk
from .celery_app import SINK_TASK, app
from .jobstore import JobStore, check_job_id
from .taskrules import _with_redis, retry_delay
from .worker import worker_job_store, worker_settings

log = logging.getLogger(__name__)

#: Writes of one chunk in one delivery when results keep arriving while it writes.
REWRITES = 3


def origin_of(indices: Iterable[int]) -> tuple[int, int]:
    """The origin of a chunk enqueued with these inputs: its first and last."""
    indices = list(indices)
    return min(indices), max(indices)


def write_chunk(store: JobStore, url: str, job_id: str, origin: tuple[int, int], settings: Settings) -> int:
    """Write every stored result of the chunk's inputs to the sink; returns the lines written
    (0: none stored yet, nothing written). Raises :class:`SinkError`."""
    first, last = origin
    written = -1
    for _ in range(REWRITES):
        lines = [(index, line) for index, line in _with_redis(
            lambda: list(store.iter_results(job_id, last + 1, start=first)), "reading results for the sink", settings)
            if line is not None]
        if len(lines) == written:
            break  # nothing came in while it wrote
        if not lines:
            return 0
        written = deliver_chunk(url, job_id, chunk_name(origin), lines)
    return max(written, 0)


def to_sink(store: JobStore, url: str, job_id: str, origin: tuple[int, int], settings: Settings,
            queue: str | None) -> None:
    """The chunk to the job's sink; a failure is recorded and delivered again later."""
    name = chunk_name(origin)
    try:
        write_chunk(store, url, job_id, origin, settings)
    except SinkError as exc:
        log.error("zstagger: %s; delivering it again later", exc)
        error = str(exc)[:500]
        _with_redis(lambda: store.sink_failed(job_id, name, error), "recording a sink failure", settings)
        _later(job_id, origin, 1, settings, queue)
        return
    _with_redis(lambda: store.sink_delivered(job_id, name), "recording a sink delivery", settings)


def sink_chunk(task: Any, store: JobStore, meta: dict[str, str], job_id: str, origin: tuple[int, int],
               settings: Settings) -> None:
    """After a task stored results of the chunk ``origin``: the chunk to the job's sink, if it has one."""
    if meta.get("sink"):
        to_sink(store, meta["sink"], job_id, origin, settings, (task.request.delivery_info or {}).get("routing_key") or None)


def _later(job_id: str, origin: tuple[int, int], attempt: int, settings: Settings, queue: str | None) -> None:
    _with_redis(lambda: deliver_sink.apply_async(
        args=(job_id, origin[0], origin[1]), kwargs={"attempt": attempt},
        countdown=retry_delay(attempt, settings.visibility_timeout), queue=queue,
    ), "queueing a sink delivery", settings)


@app.task(bind=True, name=SINK_TASK, typing=False)
def deliver_sink(self, job_id: Any, first: Any, last: Any, attempt: Any = 1) -> dict[str, int]:
    """``deliver_sink(job_id, first, last, attempt=)``: write the chunk of inputs ``first`` to
    ``last`` to the job's sink again (an earlier write failed)."""
    settings = worker_settings()
    store = worker_job_store()
    try:
        job_id = check_job_id(job_id)
        if not all(type(n) is int and n >= 0 for n in (first, last, attempt)) or last < first:
            raise ValueError("malformed sink delivery arguments")
    except Exception as exc:  # noqa: BLE001  anyone who can write to Redis can send this task
        log.error("zstagger: refused a malformed sink task: %s", " ".join(str(exc).split())[:300])
        return {"refused": 1}
    meta = _with_redis(lambda: store.meta(job_id), "reading the job", settings)
    url = meta.get("sink")
    total = int(meta["total"]) if meta.get("total", "").isdigit() else 0
    if not url or last >= total:
        log.warning("zstagger: job %s has no sink or no inputs %d-%d (expired?); dropping a sink delivery",
                    job_id, first, last)
        return {"delivered": 0}
    name = chunk_name((first, last))
    try:
        lines = write_chunk(store, url, job_id, (first, last), settings)
    except SinkError as exc:
        final = attempt + 1 >= settings.sink_max_attempts
        message = f"{exc} (gave up after {attempt + 1} deliveries)" if final else str(exc)
        _with_redis(lambda: store.sink_failed(job_id, name, message[:500]), "recording a sink failure", settings)
        if final:
            log.error("zstagger: %s", message)
            return {"delivered": 0, "gave_up": 1}
        log.warning("zstagger: %s; delivery %d of at most %d follows", exc, attempt + 2, settings.sink_max_attempts)
        _later(job_id, (first, last), attempt + 1, settings, (self.request.delivery_info or {}).get("routing_key"))
        return {"delivered": 0}
    try:
        store.sink_delivered(job_id, name)
    except redis.RedisError as exc:
        log.warning("zstagger: could not record the sink delivery of job %s: %s", job_id, exc)
    log.info("zstagger: delivered chunk %s of job %s to its sink on delivery %d", name, job_id, attempt + 1)
    return {"delivered": lines}
