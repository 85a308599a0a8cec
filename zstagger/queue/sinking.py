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
from collections.abc import Callable
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
# After a write of the chunk's results as of version ARGV[3]: by the lock's holder (ARGV[1]), the
# chunk's mark goes unless results were stored since, and the lock is renewed; by a writer whose
# lock had expired (its write may have landed after a newer one), the chunk is marked again
# (its version bumped, for as long as its results live, and dirty) to be written once more.
_FINISH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if redis.call('HGET', KEYS[2], ARGV[2]) == ARGV[3] then redis.call('HDEL', KEYS[2], ARGV[2]) end
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return 1
end
local ttl = redis.call('PTTL', KEYS[4])
if ttl > 0 then
  redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
redis.call('SET', KEYS[3], 1, 'EX', ARGV[5])
return 0
"""


def write_chunk(store: JobStore, url: str, job_id: str, origin: tuple[int, int], settings: Settings,
                on_held: Callable[[int], None] | None = None) -> int:
    """Write every stored result of the chunk's inputs to the sink; returns the lines written
    (0: none stored yet, or the chunk's writer of the moment writes them). Raises :class:`SinkError`.

    One writer per chunk at a time: each caller marks the chunk dirty (its results are stored by
    now) and takes the chunk's lock if it is free; the lock holder writes while a dirty mark or
    the chunk's "not yet in the sink" version (set with the results) is left, so results stored
    while a write was under way are written again by whoever holds the lock, and a stale write
    never lands after a newer one unnoticed. The lock lives at most a visibility timeout and is
    renewed after each write; a holder that outlived it (a write slower than that) marks the
    chunk again instead of clearing it, so it is written once more. A caller finding the lock
    taken calls ``on_held`` with the lock's remaining milliseconds: its holder may be dead (a
    worker killed mid-write), and then only a later look (:func:`to_sink` queues one) writes it."""
    first, last = origin
    base = store.keys(job_id)[0] + ":sink_"
    name = chunk_name(origin)
    lock, dirty, client = f"{base}lock:{name}", f"{base}dirty:{name}", store.redis
    unwritten, results = store.unwritten_key(job_id), store.keys(job_id)[1]
    lock_ms = _lock_ms(settings)
    _with_redis(lambda: client.set(dirty, 1, ex=DIRTY_SECONDS), "marking the chunk for its sink", settings)
    written = 0
    while True:
        token = uuid.uuid4().hex
        if not _with_redis(lambda: client.set(lock, token, nx=True, px=lock_ms), "locking the chunk's sink file", settings):
            if on_held is not None:  # the holder writes this caller's results too, if it is alive
                on_held(max(0, int(_with_redis(lambda: client.pttl(lock), "reading the chunk's lock", settings))))
            return written
        try:
            # (a lost reply to DEL, or a storer killed before its dirty mark: the version still says so)
            while _with_redis(lambda: client.delete(dirty) or client.hexists(unwritten, name), "reading the chunk's mark",
                              settings):
                version = _with_redis(lambda: store.sink_version(job_id, name), "reading the chunk's mark", settings)
                lines = _with_redis(lambda: [(index, line) for index, line in store.iter_results(job_id, last + 1, start=first)
                                             if line is not None], "reading results for the sink", settings)
                if lines:
                    written = deliver_chunk(url, job_id, name, lines)
                if not _with_redis(lambda: client.eval(_FINISH, 4, lock, unwritten, dirty, results, token, name,
                                                       version or b"", lock_ms, DIRTY_SECONDS),
                                   "recording a sink write", settings):
                    break  # the lock had expired: this write may be stale; marked again for whoever comes next
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


def _lock_ms(settings: Settings) -> int:
    """A chunk's sink lock outlives a writer that died holding it by at most a visibility timeout
    (the chunk's redelivery, or the later look, then finds it free), and at most LOCK_MS."""
    return max(1000, min(LOCK_MS, int(settings.visibility_timeout * 1000)))


def to_sink(store: JobStore, url: str, job_id: str, origin: tuple[int, int], settings: Settings,
            queue: str | None) -> None:
    """The chunk to the job's sink; a failure is recorded and delivered again later, and a chunk
    whose lock is held gets a later look (the holder may have died mid-write)."""
    name = chunk_name(origin)
    try:
        write_chunk(store, url, job_id, origin, settings,
                    on_held=lambda held_ms: _look_later(store, job_id, origin, held_ms, settings, queue))
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


def _look_later(store: JobStore, job_id: str, origin: tuple[int, int], held_ms: int, settings: Settings,
                queue: str | None) -> None:
    """Once the chunk's lock is free again: write the chunk if it is still not in the sink (a
    ``deliver_sink`` task with attempt 0; one queued per chunk at a time)."""
    # (an ETA past the visibility timeout would be handed to a second worker: the look would run twice)
    delay = min(held_ms / 1000 + 1, max(1.0, settings.visibility_timeout * 0.9))
    key = _look(store, job_id, chunk_name(origin))
    if _with_redis(lambda: store.redis.set(key, 1, nx=True, ex=int(delay) + 60), "queueing a sink look", settings):
        _with_redis(lambda: deliver_sink.apply_async(args=(job_id, origin[0], origin[1]), kwargs={"attempt": 0},
                                                     countdown=delay, queue=queue), "queueing a sink look", settings)


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


def _look(store: JobStore, job_id: str, name: str) -> str:
    return f"{store.keys(job_id)[0]}:sink_look:{name}"


def _later(job_id: str, origin: tuple[int, int], attempt: int, settings: Settings, queue: str | None) -> None:
    _with_redis(lambda: deliver_sink.apply_async(
        args=(job_id, origin[0], origin[1]), kwargs={"attempt": attempt},
        countdown=retry_delay(attempt, settings.visibility_timeout), queue=queue,
    ), "queueing a sink delivery", settings)


@app.task(bind=True, name=SINK_TASK, typing=False)
def deliver_sink(self, job_id: Any, first: Any, last: Any, attempt: Any = 1) -> dict[str, int]:
    """``deliver_sink(job_id, first, last, attempt=)``: write the chunk of inputs ``first`` to
    ``last`` to the job's sink again (an earlier write failed; attempt 0: its lock was held,
    maybe by a writer that died, and the chunk is written if it is still not in the sink)."""
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
    queue = (self.request.delivery_info or {}).get("routing_key") or None
    if attempt == 0:  # a look once a held lock is free: write the chunk only if it is still not in the sink
        with contextlib.suppress(redis.RedisError):
            store.redis.delete(_look(store, job_id, name))
        if not _with_redis(lambda: store.redis.hexists(store.unwritten_key(job_id), name), "reading the chunk's mark",
                           settings):
            return {"delivered": 0}
        to_sink(store, url, job_id, (first, last), settings, queue)
        return {"looked": 1}
    try:
        lines = write_chunk(store, url, job_id, (first, last), settings,
                            on_held=lambda held_ms: _look_later(store, job_id, (first, last), held_ms, settings, queue))
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
        _later(job_id, (first, last), attempt + 1, settings, queue)
        return {"delivered": 0}
    try:
        store.sink_delivered(job_id, name)
        store.redis.delete(_pending(store, job_id, name))
    except redis.RedisError as exc:
        log.warning("zstagger: could not record the sink delivery of job %s: %s", job_id, exc)
    log.info("zstagger: delivered chunk %s of job %s to its sink on delivery %d", name, job_id, attempt + 1)
    return {"delivered": lines}
