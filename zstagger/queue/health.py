"""Is a worker alive and ready? Heartbeats, health checks and queue depth.

- Every worker process that has loaded its model writes a heartbeat (a Redis hash with a
  TTL of three intervals, and a local file) every ``ZSTAGGER_HEARTBEAT_INTERVAL`` seconds;
  a process that failed to load its model writes the reason instead.
- :func:`check_health` is ``zstagger health``: Redis reachable, a heartbeat, and a ping
  answered by that worker's Celery consumer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import redis

from ..settings import Settings, redact_url
from .celery_app import QUEUE_NAMES, app_for
from .jobstore import connect, redis_failure
from .transport import DEAD_LETTER_KEY

log = logging.getLogger(__name__)

HEARTBEAT_PREFIX = "zstagger:worker:"
# kombu's Redis transport keeps priority levels in separate lists: name, name\x06\x163, ...
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


# -- heartbeats -------------------------------------------------------------------------


def heartbeat_file(settings: Settings, worker: str) -> Path:
    return Path(settings.heartbeat_dir) / f"{worker.replace('/', '_')}.heartbeat"


class Heartbeat:
    """A daemon thread in a pool process: 'my model is loaded and I am alive'."""

    def __init__(self, settings: Settings, worker: str, info: dict[str, Any]):
        self.settings, self.worker, self.info = settings, worker, info
        self.client = connect(settings.redis_url, retries=1)
        self._stop = threading.Event()

    def beat(self) -> None:
        ttl = int(3 * self.settings.heartbeat_interval) + 1
        path = heartbeat_file(self.settings, self.worker)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        except OSError as exc:
            log.debug("heartbeat file %s: %s", path, exc)
        try:
            key = HEARTBEAT_PREFIX + self.worker
            with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping={**self.info, "seen": time.time()})
                pipe.expire(key, ttl)
                pipe.execute()
        except redis.RedisError as exc:  # Redis down: readiness reports it; keep beating
            log.debug("heartbeat to Redis failed: %s", exc)

    def start(self) -> Heartbeat:
        self.beat()
        threading.Thread(target=self._run, name="zstagger-heartbeat", daemon=True).start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval):
            self.beat()

    def stop(self) -> None:
        self._stop.set()


def report_load_failure(settings: Settings, worker: str, error: str) -> None:
    try:
        client = connect(settings.redis_url, retries=1)
        key = HEARTBEAT_PREFIX + worker
        client.hset(key, mapping={"error": error, "pid": os.getpid(), "seen": time.time()})
        client.expire(key, int(3 * settings.heartbeat_interval) + 1)
    except redis.RedisError:
        pass


def heartbeats(client: redis.Redis, worker: str | None = None) -> dict[str, dict[str, str]]:
    keys = [HEARTBEAT_PREFIX + worker] if worker else list(client.scan_iter(HEARTBEAT_PREFIX + "*", count=500))
    found = {}
    for key in keys:
        values = client.hgetall(key)
        if values:
            name = (key.decode() if isinstance(key, bytes) else key).removeprefix(HEARTBEAT_PREFIX)
            found[name] = {k.decode(): v.decode() for k, v in values.items()}
    return found


# -- health -----------------------------------------------------------------------------


def check_health(settings: Settings, worker: str | None = None, timeout: float = 2.0) -> tuple[bool, str]:
    """(ready, one-line reason). Ready: Redis answers, and the worker (or any worker) has
    its model loaded and answers a ping."""
    client = connect(settings.redis_url, retries=0)
    try:
        client.ping()
        beats = heartbeats(client, worker)
    except redis.RedisError as exc:
        return False, f"cannot reach Redis at {redact_url(settings.redis_url)}: {exc}"
    window = 3 * settings.heartbeat_interval
    if not beats:
        who = f"worker {worker} has not reported" if worker else "no worker has reported"
        return False, f"{who} a loaded model in the last {window:g}s (starting, loading, or down)"
    failed = {name: beat["error"] for name, beat in beats.items() if beat.get("error")}
    loaded = {name: beat for name, beat in beats.items() if not beat.get("error")}
    if not loaded:
        name, error = next(iter(failed.items()))
        return False, f"worker {name} could not load its model: {error}"
    replies = app_for(settings).control.ping(destination=list(loaded), timeout=timeout) or []
    answered = {name for reply in replies for name in reply}
    ready = [name for name in loaded if name in answered]
    if not ready:
        names = ", ".join(sorted(loaded))
        return False, f"worker {names} did not answer a ping within {timeout:g}s"
    beat = loaded[ready[0]]
    return True, (
        f"worker {ready[0]} ready: {beat.get('model')} on {beat.get('device')} ({beat.get('precision')}), "
        f"model loaded in {float(beat.get('model_load_seconds', 0)):.1f}s"
    )


def check_local(settings: Settings, worker: str) -> tuple[bool, str]:
    """Liveness without Redis: did a process of this worker beat recently?"""
    path = heartbeat_file(settings, worker)
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return False, f"no heartbeat file {path}: worker {worker} has not loaded its model here"
    window = 3 * settings.heartbeat_interval
    if age > window:
        return False, f"last heartbeat of worker {worker} was {age:.0f}s ago (allowed {window:g}s)"
    return True, f"worker {worker} alive: heartbeat {age:.0f}s ago"


# -- queue depth --------------------------------------------------------------------------


def queue_stats(settings: Settings) -> dict[str, Any]:
    client = connect(settings.redis_url, retries=1)
    names = list(dict.fromkeys([*QUEUE_NAMES, *settings.queues]))
    try:
        with client.pipeline(transaction=False) as pipe:
            for name in names:
                for suffix in _PRIORITY_SUFFIXES:
                    pipe.llen(name + suffix)
            pipe.hlen("unacked")
            pipe.llen(DEAD_LETTER_KEY)
            counts = pipe.execute()
        workers = sorted(heartbeats(client))
    except redis.RedisError as exc:
        raise redis_failure(settings.redis_url, exc) from None
    depth = {name: sum(counts[i * len(_PRIORITY_SUFFIXES) : (i + 1) * len(_PRIORITY_SUFFIXES)]) for i, name in enumerate(names)}
    return {"queues": depth, "unacked": counts[-2], "dead_letter": counts[-1], "workers": workers}
