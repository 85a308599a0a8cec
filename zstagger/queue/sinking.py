"""A job's result sink, fed chunk by chunk: a chunk's file holds every stored result of its inputs.

A chunk is named by the first and last input it was enqueued with (its *origin*), which its
retries, hand-backs and a long video's time ranges carry along. Whoever stores results of a
chunk's inputs has the chunk's file written again with all of them that are stored, so a
chunk is one file whatever happened to its inputs; one writer at a time per chunk, which
writes again while others mark new results (:func:`write_chunk`), so the last write holds
everything and a stale one never lands after a newer one.

A write that still fails after :func:`~zstagger.sinks.deliver_chunk`'s quick attempts is
recorded on the job (``status`` shows the chunks not delivered and the last error) and sent
round as a ``deliver_sink`` task with backoff, up to ``ZSTAGGER_SINK_MAX_ATTEMPTS`` deliveries,
acknowledged late like every task (a worker killed mid-delivery leaves it to another).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from typing import Any

import redis

from ..errors import SinkError
from ..settings import Settings
from ..sinks import chunk_name, deliver_chunk
from .celery_app import SINK_TASK, app
from .jobstore import JobStore, check_job_id
from .messages import MAX_ORIGIN_SPAN
from .taskrules import _with_redis, retry_delay
from .worker import worker_job_store, worker_settings

log = logging.getLogger(__name__)

LOCK_MS = 300_000  # how long a chunk's sink lock outlives a writer that died holding it
DIRTY_SECONDS = 7 * 86400  # a chunk's "results stored, not yet written" mark
PENDING_SECONDS = 86400  # a chunk's "a later delivery is queued" mark (outlives any backoff chain)
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def write_chunk(store: JobStore, url: str, job_id: str, origin: tuple[int, int], settings: Settings) -> int:
    """Write every stored result of the chunk's inputs to the sink; returns the lines written
    (0: none stored yet, or the chunk's writer of the moment writes them). Raises :class:`SinkError`.

    One writer per chunk at a time: each caller marks the chunk dirty (its results are stored by
    now) and takes the chunk's lock if it is free; the lock holder writes until no mark is left,
    so results stored while a write was under way are written again by whoever holds the lock,
    and a stale write never lands after a newer one. A holder that dies leaves the lock to
    expire (its task is redelivered and writes again)."""
    first, last = origin
    base = store.keys(job_id)[0] + ":sink_"
    name = chunk_name(origin)
    lock, dirty, client = f"{base}lock:{name}", f"{base}dirty:{name}", store.redis
    _with_redis(lambda: client.set(dirty, 1, ex=DIRTY_SECONDS), "marking the chunk for its sink", settings)
    written = 0
    while True:
        token = uuid.uuid4().hex
        if not _with_redis(lambda: client.set(lock, token, nx=True, px=LOCK_MS), "locking the chunk's sink file", settings):
            return written  # the holder writes this caller's results too (they are stored, the chunk is marked)
        try:
            while _with_redis(lambda: client.delete(dirty), "reading the chunk's mark", settings):
                version = _with_redis(lambda: store.sink_version(job_id, name), "reading the chunk's mark", settings)
                lines = _with_redis(lambda: [(index, line) for index, line in store.iter_results(job_id, last + 1, start=first)
                                             if line is not None], "reading results for the sink", settings)
                if lines:
                    written = deliver_chunk(url, job_id, name, lines)
                _with_redis(lambda: store.sink_written(job_id, name, version), "recording a sink write", settings)
        except BaseException:
            with contextlib.suppress(redis.RedisError):
                client.set(dirty, 1, ex=DIRTY_SECONDS)  # not written: the next writer (a later delivery) must
            raise
        finally:
            with contextlib.suppress(redis.RedisError):
                client.eval(_RELEASE, 1, lock, token)
        # marked between the last write and the release, by a caller that found the lock taken
        if not _with_redis(lambda: client.exists(dirty), "reading the chunk's mark", settings):
            return written


def to_sink(store: JobStore, url: str, job_id: str, origin: tuple[int, int], settings: Settings,
            queue: str | None) -> None:
    """The chunk to the job's sink; a failure is recorded and delivered again later."""
    name = chunk_name(origin)
    try:
        write_chunk(store, url, job_id, origin, settings)
    except SinkError as exc:
        again = settings.sink_max_attempts > 1
        log.error("zstagger: %s%s", exc, "; delivering it again later" if again else "")
        error = str(exc)[:500]
        _with_redis(lambda: store.sink_failed(job_id, name, error), "recording a sink failure", settings)
        # One chain of later deliveries per chunk, however many writers met the failure.
        if again and _with_redis(lambda: store.redis.set(_pending(store, job_id, name), 1, nx=True, ex=PENDING_SECONDS),
                                 "recording a sink failure", settings):
            _later(job_id, origin, 1, settings, queue)
        return
    _with_redis(lambda: store.sink_delivered(job_id, name), "recording a sink delivery", settings)


def sink_chunk(task: Any, store: JobStore, meta: dict[str, str], job_id: str, origin: tuple[int, int],
               settings: Settings) -> None:
    """After a task stored results of the chunk ``origin``: the chunk to the job's sink, if it has one."""
    if meta.get("sink"):
        to_sink(store, meta["sink"], job_id, origin, settings, (task.request.delivery_info or {}).get("routing_key") or None)


def sink_mark(meta: dict[str, str], origin: tuple[int, int]) -> str | None:
    """The chunk whose "not yet in the sink" mark a save of its results sets (None: the job has no sink)."""
    return chunk_name(origin) if meta.get("sink") else None


def _pending(store: JobStore, job_id: str, name: str) -> str:
    return f"{store.keys(job_id)[0]}:sink_pending:{name}"


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
        if not all(type(n) is int and n >= 0 for n in (first, last, attempt)) or not 0 <= last - first < MAX_ORIGIN_SPAN:
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
            with contextlib.suppress(redis.RedisError):
                store.redis.delete(_pending(store, job_id, name))  # a later failure may start a chain again
            return {"delivered": 0, "gave_up": 1}
        log.warning("zstagger: %s; delivery %d of at most %d follows", exc, attempt + 2, settings.sink_max_attempts)
        _later(job_id, (first, last), attempt + 1, settings, (self.request.delivery_info or {}).get("routing_key"))
        return {"delivered": 0}
    try:
        store.sink_delivered(job_id, name)
        store.redis.delete(_pending(store, job_id, name))
    except redis.RedisError as exc:
        log.warning("zstagger: could not record the sink delivery of job %s: %s", job_id, exc)
    log.info("zstagger: delivered chunk %s of job %s to its sink on delivery %d", name, job_id, attempt + 1)
    return {"delivered": lines}
