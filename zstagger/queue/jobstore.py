"""The job store: job state in Redis, one hash of results per job, keyed by input index.

Writing a result is ``HSET results <index> <json>``: a chunk that is delivered twice
(its worker died after tagging but before acknowledging) overwrites its own entries, so
there is always exactly one result per input. All keys of a job expire together, at
``created + ZSTAGGER_RESULT_TTL``.

Also here, as the owner of the keys: what a job id is (:func:`check_job_id`, the one rule
the producer, the CLI and the task apply), and how a Redis failure is told to a user
(:func:`redis_failure`: unreachable, or refusing writes because it is out of memory).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..errors import InvalidJobIdError, QueueUnavailableError, RedisRefusedWritesError, UnknownJobError
from ..results import TagResult
from ..settings import redact_url

PREFIX = "zstagger:job:"
# A job is created with this field set (to the time of the producer's last progress) and
# its chunks are published; the field is removed once every chunk is. Workers wait for it
# to go before tagging, so an enqueue that fails part way (and deletes the job) leaves
# nothing tagged. No progress for ENQUEUE_STALL seconds: the producer stopped part way.
ENQUEUING = "enqueuing"
ENQUEUE_BEAT = 5.0
ENQUEUE_STALL = 120.0
_JOB_ID = re.compile(r"[0-9a-f]{32}")


def new_job_id() -> str:
    return uuid.uuid4().hex


def check_job_id(value: object) -> str:
    """The job id in ``value`` (as ``zstagger enqueue`` printed it: 32 hex digits), normalised."""
    if isinstance(value, str):
        job_id = value.strip().lower()
        if _JOB_ID.fullmatch(job_id):
            return job_id
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    raise InvalidJobIdError(f"{shown} is not a job id: a job id is the 32 hex digits `zstagger enqueue` printed")


def refuses_writes(exc: BaseException) -> str | None:
    """Why Redis refused a write, if that is what ``exc`` says (else None)."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError) or str(exc).startswith("OOM "):
        return "out of memory: maxmemory reached and the policy is noeviction"
    if isinstance(exc, redis.exceptions.ReadOnlyError) or str(exc).startswith("READONLY"):
        return "it is a read-only replica"
    return None


def describe_failure(exc: BaseException) -> str:
    """One short phrase for logs: what went wrong with Redis."""
    reason = refuses_writes(exc)
    return f"Redis refused writes ({reason})" if reason else f"Redis unavailable ({type(exc).__name__}: {exc})"


def redis_failure(url: str, exc: BaseException, doing: str = "") -> QueueUnavailableError:
    """The user-facing error for a failed Redis call; ``doing`` says what was being done, and its consequence."""
    reason = refuses_writes(exc)
    where = redact_url(url)
    context = f" {doing}" if doing else ""
    if reason:
        return RedisRefusedWritesError(
            f"Redis refused writes ({reason}) at {where}{context}. Free memory in Redis (finished jobs expire after "
            "ZSTAGGER_RESULT_TTL) or raise its maxmemory, then try again."
        )
    return QueueUnavailableError(
        f"cannot reach Redis at {where} ({exc}){context}. "
        "Start redis-server, or point ZSTAGGER_REDIS_URL at yours (redis://[:password@]host:port/db)."
    )


def connect(url: str, retries: int = 6, timeout: float = 5) -> redis.Redis:
    """A client that rides out short Redis blips (reconnects with backoff, ~30 s in all)."""
    client = redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=30,
        socket_keepalive=True,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=10, base=0.5), retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
    return client


class JobStore:
    def __init__(self, client: redis.Redis):
        self.redis = client

    @staticmethod
    def keys(job_id: str) -> tuple[str, str, str]:
        base = PREFIX + check_job_id(job_id)
        return base, base + ":results", base + ":failed"

    def create(self, job_id: str, total: int, expires_at: int, **meta: Any) -> None:
        job, _, _ = self.keys(job_id)
        if meta.get("sink"):
            meta["sink_marks"] = 1  # its chunks carry "not yet in the sink" marks (older jobs have none)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(job, mapping={"total": total, "created": time.time(), "expires_at": expires_at, **meta})
            pipe.expireat(job, expires_at)
            pipe.execute()

    def enqueuing(self, job_id: str) -> None:
        """The producer is still publishing the job's chunks (refreshes the mark)."""
        self.update(job_id, **{ENQUEUING: time.time()})

    def enqueued(self, job_id: str) -> None:
        """Every chunk of the job is published: workers may tag them (HDEL works at maxmemory too)."""
        self.redis.hdel(self.keys(job_id)[0], ENQUEUING)

    def delete(self, job_id: str) -> None:
        """Forget a job (DEL works even when Redis refuses writes for lack of memory)."""
        self.redis.delete(*self.keys(job_id), self.sink_key(job_id), self.unwritten_key(job_id))

    def mark_started(self, job_id: str) -> None:
        self.redis.hsetnx(self.keys(job_id)[0], "started", time.time())

    def missing(self, job_id: str, indices: list[int]) -> list[int]:
        """Which of these inputs have no stored result yet."""
        if not indices:
            return []
        stored = self.redis.hmget(self.keys(job_id)[1], [str(i) for i in indices])
        return [i for i, value in zip(indices, stored) if value is None]

    def save(self, job_id: str, results: Iterable[tuple[int, TagResult]], expires_at: int,
             counts: dict[str, int] | None = None, sink_chunk: str | None = None) -> int:
        """Store results by input index; ``counts`` are added to the job's record in the same transaction
        (so a chunk redelivered after its results were saved does not count twice), and so is
        ``sink_chunk``'s "stored, not yet in the sink" mark (a sink write clears it). Returns
        how many inputs of the job have a result now."""
        return self.save_lines(job_id, [(i, r.to_json(), r.error is not None) for i, r in results], expires_at, counts,
                               sink_chunk)

    def save_lines(self, job_id: str, results: list[tuple[int, str, bool]], expires_at: int,
                   counts: dict[str, int] | None = None, sink_chunk: str | None = None) -> int:
        """:meth:`save` for results already serialized: (index, JSON line, failed)."""
        job, results_key, failed_key = self.keys(job_id)
        if not results:
            return int(self.redis.hlen(results_key))
        failed = [str(i) for i, _, bad in results if bad]
        succeeded = [str(i) for i, _, bad in results if not bad]
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(results_key, mapping={str(i): line for i, line, _ in results})
            if failed:
                pipe.sadd(failed_key, *failed)
            if succeeded:
                pipe.srem(failed_key, *succeeded)
            pipe.expireat(results_key, expires_at)
            pipe.expireat(failed_key, expires_at)
            for field, value in (counts or {}).items():
                pipe.hincrby(job, field, value)
            if counts:
                pipe.expireat(job, expires_at)  # never a job record without an expiry (one rolled back meanwhile)
            if sink_chunk is not None:  # a new version of the chunk's results, for its sink file
                pipe.hincrby(self.unwritten_key(job_id), sink_chunk, 1)
                pipe.expireat(self.unwritten_key(job_id), expires_at)
            pipe.hlen(results_key)
            return int(pipe.execute()[-1])

    # -- a long video judged in time ranges by several workers ----------------------------------

    def range_key(self, job_id: str, index: int) -> str:
        return f"{self.keys(job_id)[0]}:ranges:{int(index)}"

    def save_range(self, job_id: str, index: int, part: int, data: bytes, expires_at: int) -> int:
        """Keep what one range of input ``index`` gave (HSET: a redelivered range overwrites its own
        part); returns how many of its ranges are in."""
        key = self.range_key(job_id, index)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, str(int(part)), data)
            pipe.expireat(key, expires_at)
            pipe.hlen(key)
            return int(pipe.execute()[-1])

    def ranges(self, job_id: str, index: int) -> dict[int, bytes]:
        """The ranges of input ``index`` that are in, by number."""
        raw = self.redis.hgetall(self.range_key(job_id, index))
        return {int(k): v for k, v in raw.items() if k.isdigit()}

    def drop_ranges(self, job_id: str, index: int) -> None:
        self.redis.delete(self.range_key(job_id, index), self.range_key(job_id, index) + ":decided")

    # The earliest time a range found the video decided (its taxonomy's early exit): ranges that
    # start later are skipped. Kept as the smallest time any range reported.
    _DECIDE = ("local v = redis.call('GET', KEYS[1]) "
               "if (not v) or tonumber(ARGV[1]) < tonumber(v) then redis.call('SET', KEYS[1], ARGV[1], 'EXAT', ARGV[2]) end "
               "return redis.call('GET', KEYS[1])")

    def decide_ranges(self, job_id: str, index: int, at: float, expires_at: int) -> None:
        """Input ``index``'s video is decided by the frame at ``at`` seconds (the earliest one wins)."""
        self.redis.eval(self._DECIDE, 1, self.range_key(job_id, index) + ":decided", repr(float(at)), int(expires_at))

    def ranges_decided(self, job_id: str, index: int) -> float | None:
        value = self.redis.get(self.range_key(job_id, index) + ":decided")
        return float(value) if value is not None else None

    # -- chunks not yet delivered to the job's result sink (zstagger.queue.sinking) -------------

    def sink_key(self, job_id: str) -> str:
        return self.keys(job_id)[0] + ":sink_failed"

    def sink_failed(self, job_id: str, chunk: str, error: str) -> None:
        """Chunk ``chunk`` could not be written to the sink (``error``: why), for now."""
        job, key = self.keys(job_id)[0], self.sink_key(job_id)
        expires, marks = self.redis.hmget(job, ["expires_at", "sink_marks"])
        if expires is None:
            return  # no such job (deleted, expired): nothing to keep a record on
        if marks and not self.redis.hexists(self.unwritten_key(job_id), chunk):
            return  # another writer has written the chunk since this one failed
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, chunk, error)
            pipe.expireat(key, int(float(expires)))
            pipe.execute()
        self.update(job_id, sink_last_error=error)

    def sink_delivered(self, job_id: str, chunk: str) -> None:
        self.redis.hdel(self.sink_key(job_id), chunk)

    # Each save of a chunk's results bumps the chunk's version in this hash, in the save's own
    # transaction; a sink write clears it only if no save came after the version it read before
    # reading the results it wrote. So "results stored, not yet in the sink" holds from the
    # moment they are stored, through a worker killed before its write, until a write has them.

    def unwritten_key(self, job_id: str) -> str:
        return self.keys(job_id)[0] + ":sink_unwritten"

    def sink_version(self, job_id: str, chunk: str) -> bytes | None:
        """The chunk's version of stored results not yet in the sink (None: all are in it)."""
        return self.redis.hget(self.unwritten_key(job_id), chunk)

    def meta(self, job_id: str) -> dict[str, str]:
        """The job's record (total, queue, taxonomy, callback settings, ...); empty if there is no such job."""
        raw = self.redis.hgetall(self.keys(job_id)[0])
        return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()}

    # Both only touch a job record that exists: HSET on a missing key would create a record
    # with no expiry, for a job that was rolled back or has expired.
    _UPDATE = "if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HSET', KEYS[1], unpack(ARGV)) end return -1"
    _CLAIM = "if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) end return 0"

    def update(self, job_id: str, **fields: Any) -> bool:
        """Set fields of an existing job's record; False if there is no such job."""
        args = [part for key, value in fields.items() for part in (key, str(value))]
        return self.redis.eval(self._UPDATE, 1, self.keys(job_id)[0], *args) != -1

    def claim(self, job_id: str, field: str) -> bool:
        """Set ``field`` to now unless it is set: True for the one caller that set it."""
        return bool(self.redis.eval(self._CLAIM, 1, self.keys(job_id)[0], field, str(time.time())))

    def is_cancelled(self, job_id: str) -> bool:
        return bool(self.redis.hexists(self.keys(job_id)[0], "cancelled"))

    def status(self, job_id: str) -> dict[str, Any]:
        job, results_key, failed_key = self.keys(job_id)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(job)
            pipe.hlen(results_key)
            pipe.scard(failed_key)
            pipe.hlen(self.sink_key(job_id))
            pipe.hlen(self.unwritten_key(job_id))
            meta, finished, failed, undelivered, unwritten = pipe.execute()
        if not meta:
            raise UnknownJobError(f"no job {job_id!r} in Redis: it never existed or its results expired (ZSTAGGER_RESULT_TTL)")
        meta = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in meta.items()}
        try:
            total = int(meta["total"])
        except (KeyError, ValueError):
            raise UnknownJobError(f"{job.decode() if isinstance(job, bytes) else job} in Redis is not a zstagger job record") from None
        finished = min(finished, total)  # indices are checked before they are stored; never report negative pending
        failed = min(failed, finished)
        if "cancelled" in meta:
            state = "cancelled"
        else:
            state = "done" if finished >= total else ("running" if finished or "started" in meta else "pending")
        status: dict[str, Any] = {
            "job_id": check_job_id(job_id),
            "state": state,
            "total": total,
            "done": finished - failed,
            "failed": failed,
            "pending": total - finished,
        }
        if "cache_hits" in meta:  # workers with an embedding store or image cache: images neither decoded nor encoded
            status["cache_hits"] = int(meta["cache_hits"])
        if "sink" in meta:  # chunks with stored results not yet in the sink: being written, to be retried, given up
            # (a failed chunk is also unwritten; jobs enqueued before the marks existed count failures)
            count = int(unwritten) if meta.get("sink_marks") else max(int(undelivered), int(unwritten))
            status["sink"] = {"undelivered_chunks": count,
                              "last_error": meta.get("sink_last_error") or None}
        if "callback_url" in meta:
            status["webhook"] = {
                "attempts": int(meta.get("webhook_attempts", 0)),
                "delivered": "webhook_delivered" in meta,
                "last_error": meta.get("webhook_last_error") or None,
            }
        return status

    def iter_results(
        self, job_id: str, total: int, page: int = 1000, start: int = 0
    ) -> Iterator[tuple[int, str | None]]:
        """(index, result JSON or None if not finished) for inputs ``start`` to ``total - 1``, in order."""
        results_key = self.keys(job_id)[1]
        for first in range(start, total, page):
            indices = range(first, min(total, first + page))
            for i, value in zip(indices, self.redis.hmget(results_key, [str(i) for i in indices])):
                yield i, value.decode() if value is not None else None
