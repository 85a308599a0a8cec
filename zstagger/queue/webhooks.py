"""Webhook delivery: a Celery task that POSTs a finished job's signed event, with retries.

The event body (JSON)::

    {"id": "evt_<job>_<done|cancelled>", "type": "job.done" | "job.cancelled",
     "created": <unix time the job finished>, "job_id": ..., "status": {...},
     "results_url": <the HTTP API's results URL, or null>,
     "results": [...]           # only when their JSON is at most ZSTAGGER_WEBHOOK_INLINE_BYTES
     "results_inline": true|false}

Signed as :mod:`.signing` describes. Delivery runs as its own task (acknowledged late, so a
worker killed mid-delivery leaves it to another), at least once: a 2xx answer ends it;
anything else is retried with backoff up to ``ZSTAGGER_WEBHOOK_MAX_ATTEMPTS`` times, except a
refusal by the address policy: the callback URL obeys the same policy as image URLs, checked
again at every attempt on the worker (its ``ZSTAGGER_ALLOW_PRIVATE_URLS``), and a refusal is
permanent, so it ends the delivery at once. Attempts and the last error are recorded on the
job (``status`` shows them).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis
from celery.exceptions import Reject
from kombu.exceptions import OperationalError

from ..errors import FetchError
from ..net import FetchPolicy, http_post
from .celery_app import app
from .notify import WEBHOOK_TASK, event_id
from .signing import signed_headers
from .jobstore import JobStore, check_job_id
from .taskrules import retry_delay
from .worker import worker_settings, worker_job_store

log = logging.getLogger(__name__)

# Delivery failures that every attempt would meet again: the address policy refuses the
# callback (the workers' ZSTAGGER_ALLOW_PRIVATE_URLS decides), or it is not an http(s) URL.
_REFUSED = ("url_blocked", "invalid_url")


def event_body(store: JobStore, job_id: str, state: str, created: float, inline_limit: int,
               results_url: str | None) -> bytes:
    """The event's JSON, the same bytes for every attempt of the same event."""
    status = store.status(job_id)
    event: dict[str, Any] = {
        "id": event_id(job_id, state), "type": f"job.{state}", "created": round(created, 3), "job_id": job_id,
        "status": {k: v for k, v in status.items() if k != "webhook"}, "results_url": results_url,
    }
    lines, size = [], 0
    for _, line in store.iter_results(job_id, status["total"]):
        if line is None:
            continue
        size += len(line) + 1
        if size > inline_limit:
            lines = None
            break
        lines.append(line)
    event["results_inline"] = lines is not None
    head = json.dumps(event, separators=(",", ":"))
    if lines is None:
        return head.encode()
    return (head[:-1] + ',"results":[' + ",".join(lines) + "]}").encode()


@app.task(bind=True, name=WEBHOOK_TASK, typing=False)
def deliver_event(self, job_id: str, state: str, created: float, attempt: int = 0) -> dict[str, Any]:
    settings = worker_settings()
    store = worker_job_store()
    try:
        job_id = check_job_id(job_id)
        if state not in ("done", "cancelled") or not isinstance(created, (int, float)) or not isinstance(attempt, int):
            raise ValueError("malformed event arguments")
    except Exception as exc:  # noqa: BLE001  anyone who can write to Redis can send this task
        log.error("zstagger: refused a malformed webhook task: %s", " ".join(str(exc).split())[:300])
        return {"refused": 1}
    try:
        meta = store.meta(job_id)
        url = meta.get("callback_url")
        if not url:
            log.warning("zstagger: job %s has no callback URL (expired?); dropping its %s event", job_id, state)
            return {"delivered": 0}
        body = event_body(store, job_id, state, created, settings.webhook_inline_bytes, meta.get("results_url"))
    except redis.RedisError as exc:
        return _again(self, job_id, state, created, attempt, f"Redis unavailable: {exc}", settings, record=False)
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
    if not secret:
        return _again(self, job_id, state, created, attempt,
                      "ZSTAGGER_WEBHOOK_SECRET is not set on this worker: events cannot be signed", settings)
    headers = {"Content-Type": "application/json", **signed_headers(secret, event_id(job_id, state), body)}
    policy = FetchPolicy(timeout=settings.webhook_timeout, allow_private_urls=settings.allow_private_urls)
    try:
        status, reason = http_post(url, body, headers, policy)
    except FetchError as exc:
        # The address policy (or a URL that cannot be a callback) refuses it the same way at
        # every attempt: give up now rather than retry a refusal that cannot change.
        permanent = exc.kind in _REFUSED
        return _again(self, job_id, state, created, attempt, exc.message, settings, permanent=permanent)
    if 200 <= status < 300:
        _record(store, job_id, webhook_attempts=attempt + 1, webhook_delivered=time.time(), webhook_last_error="")
        log.info("zstagger: delivered %s to the callback of job %s (HTTP %d)", event_id(job_id, state), job_id, status)
        return {"delivered": 1, "status": status}
    return _again(self, job_id, state, created, attempt, f"HTTP {status} {reason} from the callback URL", settings)


def _record(store: JobStore, job_id: str, **fields: Any) -> None:
    try:
        store.update(job_id, **fields)
    except redis.RedisError as exc:
        log.warning("zstagger: could not record a webhook attempt of job %s: %s", job_id, exc)


def _again(task, job_id: str, state: str, created: float, attempt: int, error: str, settings,
           record: bool = True, permanent: bool = False) -> dict[str, Any]:
    """Record a failed attempt, and send the event round again unless attempts are used up
    or the failure is ``permanent`` (the same at every attempt)."""
    store = worker_job_store()
    attempts = attempt + 1
    final = permanent or attempts >= settings.webhook_max_attempts
    if permanent:
        message = f"{error} (permanent: not retried)"
    else:
        message = error if not final else f"{error} (gave up after {attempts} attempts)"
    if record:
        _record(store, job_id, webhook_attempts=attempts, webhook_last_error=message)
    if final:
        log.error("zstagger: webhook of job %s: %s", job_id, message)
        return {"delivered": 0, "gave_up": 1}
    delay = retry_delay(attempts, settings.visibility_timeout)
    log.warning("zstagger: webhook of job %s failed (%s); attempt %d in %.0fs", job_id, error, attempts + 1, delay)
    queue = (task.request.delivery_info or {}).get("routing_key") or None
    try:
        deliver_event.apply_async(args=(job_id, state, created), kwargs={"attempt": attempts}, countdown=delay,
                                  queue=queue)
    except (redis.RedisError, OperationalError) as exc:
        # Not sent round: give this message back, so the attempt is made again later.
        raise Reject(f"could not requeue the webhook of job {job_id}: {exc}", requeue=True) from exc
    return {"delivered": 0, "retrying": 1}
