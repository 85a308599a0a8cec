"""The worker's one task: tag a chunk of images with the engine, store one result per input.

Thin by design: the Tagger does the work, :mod:`.worker` owns the process's model and
connections, :mod:`.store` owns the job's keys. Here: what to tag, and the retry policy.
"""

from __future__ import annotations

import json
import logging
import time
from functools import lru_cache
from typing import Any

import redis
from celery.exceptions import Reject
from kombu.exceptions import OperationalError

from ..results import TagResult
from ..taxonomy import Taxonomy
from .celery_app import TASK_NAME, app
from .messages import decode_ref
from .worker import metrics, worker_settings, worker_store, worker_tagger

log = logging.getLogger(__name__)


@lru_cache(maxsize=64)
def _taxonomy(spec_json: str) -> Taxonomy:
    return Taxonomy.parse(json.loads(spec_json))


def retry_delay(attempt: int) -> float:
    """Backoff before retry number ``attempt`` (1-based): 2, 4, 8, ... seconds, at most 60."""
    return float(min(60, 2**attempt))


@app.task(bind=True, name=TASK_NAME)
def tag_chunk(
    self,
    job_id: str,
    items: list[list[Any]],
    taxonomy: dict[str, Any],
    top_k: int | None = None,
    expires_at: float = 0,
    attempt: int = 0,
) -> dict[str, int]:
    """Tag ``items`` (``[index, reference]`` pairs) and store one result per index.

    Bad images become error records. Transient failures (network timeouts) are sent
    round again, alone, after a backoff, up to ``ZSTAGGER_MAX_RETRIES`` times; then they
    are stored as error records saying so. If Redis itself cannot be reached the chunk
    is requeued, never dropped.
    """
    settings = worker_settings()
    store = worker_store()
    try:
        if expires_at and time.time() > expires_at or not store.exists(job_id):
            log.warning("zstagger: job %s has expired or was deleted; dropping a chunk of %d", job_id, len(items))
            return {"tagged": 0, "skipped": len(items)}
        store.mark_started(job_id)
        todo = set(store.missing(job_id, [index for index, _ in items]))
    except redis.RedisError as exc:
        raise Reject(f"Redis unavailable before tagging: {exc}", requeue=True) from exc

    pending = [(index, ref) for index, ref in items if index in todo]
    spec = _taxonomy(json.dumps(taxonomy, sort_keys=True))
    try:
        tagger = worker_tagger()
    except Exception as exc:  # no model in this process: give the chunk back, untouched
        raise Reject(f"model not loaded: {exc}", requeue=True) from exc
    # Split the chunk so that every encoder lane gets a share of it.
    share = max(1, -(-len(pending) // tagger.lanes))
    started = time.perf_counter()
    results = tagger.tag([decode_ref(ref) for _, ref in pending], taxonomy=spec, top_k=top_k, batch_size=share) if pending else []
    seconds = time.perf_counter() - started

    final: list[tuple[int, TagResult]] = []
    again: list[list[Any]] = []
    for (index, ref), result in zip(pending, results):
        if result.error is not None and result.error.transient:
            if attempt < settings.max_retries:
                again.append([index, ref])
                continue
            result = TagResult.failed(
                result.image, result.taxonomy, result.error.type,
                f"{result.error.message} (gave up after {attempt + 1} attempts)",
            )
        final.append((index, result))
    try:
        store.save(job_id, final, int(expires_at) if expires_at else int(time.time() + settings.result_ttl))
        if again:
            queue = (self.request.delivery_info or {}).get("routing_key") or None
            tag_chunk.apply_async(
                args=(job_id, again, taxonomy),
                kwargs={"top_k": top_k, "expires_at": expires_at, "attempt": attempt + 1},
                countdown=retry_delay(attempt + 1),
                queue=queue,
            )
    except (redis.RedisError, OperationalError) as exc:
        raise Reject(f"Redis unavailable while storing results: {exc}", requeue=True) from exc
    metrics().chunk_done(spec.name, [result for _, result in final], seconds, len(again))
    return {"tagged": len(final), "retrying": len(again), "skipped": len(items) - len(pending)}
