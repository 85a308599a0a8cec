"""Job state in Redis: one hash of results per job, keyed by input index.

Writing a result is ``HSET results <index> <json>``: a chunk that is delivered twice
(its worker died after tagging but before acknowledging) overwrites its own entries, so
there is always exactly one result per input. All keys of a job expire together, at
``created + ZSTAGGER_RESULT_TTL``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..errors import ZstaggerError
from ..results import TagResult

PREFIX = "zstagger:job:"


class UnknownJobError(ZstaggerError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class QueueUnavailableError(ZstaggerError):
    """Redis cannot be reached."""


def connect(url: str, retries: int = 6) -> redis.Redis:
    """A client that rides out short Redis blips (reconnects with backoff, ~30 s in all)."""
    client = redis.Redis.from_url(
        url,
        socket_connect_timeout=5,
        socket_timeout=30,
        socket_keepalive=True,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=10, base=0.5), retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
    return client


def describe_url(url: str) -> str:
    """The Redis URL without its password, for messages."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    return f"{parts.scheme}://{host}:{parts.port or 6379}{parts.path}"


class JobStore:
    def __init__(self, client: redis.Redis):
        self.redis = client

    @staticmethod
    def keys(job_id: str) -> tuple[str, str, str]:
        base = PREFIX + job_id
        return base, base + ":results", base + ":failed"

    def create(self, job_id: str, total: int, expires_at: int, **meta: Any) -> None:
        job, _, _ = self.keys(job_id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(job, mapping={"total": total, "created": time.time(), "expires_at": expires_at, **meta})
            pipe.expireat(job, expires_at)
            pipe.execute()

    def mark_started(self, job_id: str) -> None:
        self.redis.hsetnx(self.keys(job_id)[0], "started", time.time())

    def exists(self, job_id: str) -> bool:
        return bool(self.redis.exists(self.keys(job_id)[0]))

    def missing(self, job_id: str, indices: list[int]) -> list[int]:
        """Which of these inputs have no stored result yet."""
        if not indices:
            return []
        stored = self.redis.hmget(self.keys(job_id)[1], [str(i) for i in indices])
        return [i for i, value in zip(indices, stored) if value is None]

    def save(self, job_id: str, results: Iterable[tuple[int, TagResult]], expires_at: int) -> None:
        _, results_key, failed_key = self.keys(job_id)
        results = list(results)
        if not results:
            return
        failed = [str(i) for i, r in results if r.error is not None]
        succeeded = [str(i) for i, r in results if r.error is None]
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(results_key, mapping={str(i): r.model_dump_json() for i, r in results})
            if failed:
                pipe.sadd(failed_key, *failed)
            if succeeded:
                pipe.srem(failed_key, *succeeded)
            pipe.expireat(results_key, expires_at)
            pipe.expireat(failed_key, expires_at)
            pipe.execute()

    def status(self, job_id: str) -> dict[str, Any]:
        job, results_key, failed_key = self.keys(job_id)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(job)
            pipe.hlen(results_key)
            pipe.scard(failed_key)
            meta, finished, failed = pipe.execute()
        if not meta:
            raise UnknownJobError(f"no job {job_id!r} in Redis: it never existed or its results expired (ZSTAGGER_RESULT_TTL)")
        meta = {k.decode(): v.decode() for k, v in meta.items()}
        total = int(meta["total"])
        state = "done" if finished >= total else ("running" if finished or "started" in meta else "pending")
        return {
            "job_id": job_id,
            "state": state,
            "total": total,
            "done": finished - failed,
            "failed": failed,
            "pending": total - finished,
        }

    def iter_results(
        self, job_id: str, total: int, page: int = 1000, start: int = 0
    ) -> Iterator[tuple[int, str | None]]:
        """(index, result JSON or None if not finished) for inputs ``start`` to ``total - 1``, in order."""
        results_key = self.keys(job_id)[1]
        for first in range(start, total, page):
            indices = range(first, min(total, first + page))
            for i, value in zip(indices, self.redis.hmget(results_key, [str(i) for i in indices])):
                yield i, value.decode() if value is not None else None
