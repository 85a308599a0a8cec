"""What every task does alike: the retry policy, riding out Redis failures, reading a job's
taxonomy spec, and refusing a malformed message. Shared by :mod:`.tasks` and :mod:`.ranges`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

import redis
from celery.exceptions import Reject
from kombu.exceptions import OperationalError

from ..errors import TaxonomyError
from ..settings import Settings
from ..taxonomy import Taxonomy
from .jobstore import describe_failure

log = logging.getLogger("zstagger.queue.tasks")
T = TypeVar("T")


@lru_cache(maxsize=64)
def _taxonomy(spec_json: str) -> Taxonomy:
    return Taxonomy.parse(json.loads(spec_json))


_STORED: OrderedDict[str, Taxonomy] = OrderedDict()  # sha256 -> the spec stored in Redis, parsed (a few, latest used)
_STORED_LOCK = threading.Lock()


def task_taxonomy(one: Any, client: Any, settings: Settings) -> Taxonomy:
    """The taxonomy a task names: its spec, or a spec stored in Redis by hash (large ones, see
    :mod:`.vectors`), read and parsed once per process. Raises TaxonomyError (or ValueError)
    for a spec no worker can use."""
    from .vectors import STORED_SPEC, is_stored_spec, stored_spec

    if not is_stored_spec(one):
        return _taxonomy(json.dumps(one, sort_keys=True))
    sha256 = one[STORED_SPEC]
    with _STORED_LOCK:
        if sha256 in _STORED:
            _STORED.move_to_end(sha256)
            return _STORED[sha256]
    data = _with_redis(lambda: stored_spec(client, sha256), "reading the job's taxonomy spec", settings)
    try:
        taxonomy = Taxonomy.parse(data)
    except RecursionError:
        raise TaxonomyError("the job's stored taxonomy spec is nested too deeply to read") from None
    with _STORED_LOCK:
        _STORED[sha256] = taxonomy
        while len(_STORED) > 8:
            _STORED.popitem(last=False)
    return taxonomy


def retry_delay(attempt: int, visibility_timeout: float | None = None) -> float:
    """Backoff before retry number ``attempt`` (1-based): 2, 4, 8, ... seconds, at most 60,
    and at most a third of the visibility timeout.

    A retry is sent with a countdown; the worker that receives it holds it unacknowledged
    until it is due, so a countdown near the visibility timeout would have it redelivered
    to a second worker and run twice.
    """
    delay = float(min(60, 2**attempt))
    return min(delay, visibility_timeout / 3) if visibility_timeout else delay


def redis_patience(settings: Settings) -> float:
    """How long a task waits out a Redis failure (unreachable, refusing writes) before it
    gives the chunk back: well inside the visibility timeout, so it is not redelivered meanwhile."""
    return min(30.0, settings.visibility_timeout / 3)


def _with_redis(call: Callable[[], T], doing: str, settings: Settings) -> T:
    """``call()``, retried with backoff while Redis fails; then the chunk is requeued, never dropped."""
    deadline = time.monotonic() + redis_patience(settings)
    delay = 0.5
    while True:
        try:
            return call()
        except (redis.RedisError, OperationalError) as exc:
            cause = exc.__cause__ if isinstance(exc, OperationalError) and exc.__cause__ is not None else exc
            what = describe_failure(cause)
            if time.monotonic() + delay > deadline:
                raise Reject(f"{what} while {doing}; the chunk is left for redelivery", requeue=True) from exc
            log.warning("zstagger: %s while %s; retrying in %.1fs", what, doing, delay)
            time.sleep(delay)
            delay = min(2 * delay, 8.0)


def _refuse(task_id: str | None, problem: Exception) -> dict[str, int]:
    reason = " ".join(str(problem).split())[:500]  # one line, bounded: the content comes from whoever wrote to Redis
    log.error("zstagger: refused a malformed chunk (task %s): %s", task_id, reason)
    return {"refused": 1}


__all__ = ["_refuse", "_taxonomy", "_with_redis", "redis_patience", "retry_delay"]
