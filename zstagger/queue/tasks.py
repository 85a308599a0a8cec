"""The worker side: one thin task that tags a chunk of images with the engine.

The model is loaded once per worker process, after the fork (``worker_process_init``), so
the parent never touches torch: forked torch thread pools and CUDA contexts break.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from functools import lru_cache
from typing import Any

import redis
from celery import signals
from celery.exceptions import Reject
from kombu.exceptions import OperationalError

from ..results import TagResult
from ..settings import Settings
from ..taxonomy import Taxonomy
from .celery_app import TASK_NAME, app
from .messages import decode_ref
from .monitoring import HEARTBEAT_PREFIX, Heartbeat, WorkerMetrics, prepare_metrics_dir, report_load_failure, serve_metrics
from .store import JobStore, connect

log = logging.getLogger(__name__)

_state: dict[str, Any] = {}


@signals.worker_init.connect
def _prepare_parent(sender=None, **_: Any) -> None:
    """In the parent, before forking: share the cores out, name the worker, serve metrics."""
    concurrency = getattr(sender, "concurrency", None) or 1
    os.environ.setdefault("ZSTAGGER_TORCH_THREADS", str(max(1, (os.cpu_count() or 1) // concurrency)))
    os.environ["ZSTAGGER_WORKER_NAME"] = getattr(sender, "hostname", None) or f"zstagger@{os.uname().nodename}"
    _state["solo"] = "solo" in str(getattr(sender, "pool_cls", "")).lower()
    settings = worker_settings()
    if settings.metrics_port:
        prepare_metrics_dir()
        serve_metrics(settings)


@signals.worker_process_init.connect
def _load_in_child(**_: Any) -> None:
    start_process()


@signals.worker_ready.connect
def _load_in_solo_pool(**_: Any) -> None:
    if _state.get("solo"):  # no pool processes: this process tags
        start_process()


@signals.worker_process_shutdown.connect
def _child_exit(**_: Any) -> None:
    if "heartbeat" in _state:
        _state["heartbeat"].stop()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())


@signals.worker_shutdown.connect
def _forget_worker(**_: Any) -> None:
    """Warm shutdown: drop the heartbeat now, so health checks stop routing work here."""
    name = os.environ.get("ZSTAGGER_WORKER_NAME")
    if name:
        try:
            client = connect(worker_settings().redis_url, retries=0)
            if not client.hget(HEARTBEAT_PREFIX + name, "error"):  # a load failure stays visible until it expires
                client.delete(HEARTBEAT_PREFIX + name)
        except redis.RedisError:
            pass


def start_process() -> None:
    """Load the model in this process, then start its heartbeat (or report why it failed)."""
    settings = worker_settings()
    name = os.environ.get("ZSTAGGER_WORKER_NAME", f"zstagger@{os.uname().nodename}")
    try:
        tagger = worker_tagger()
    except Exception as exc:
        log.error("zstagger: worker %s could not load model %s: %s; shutting down", name, settings.model, exc)
        report_load_failure(settings, name, f"{type(exc).__name__}: {exc}".splitlines()[0])
        # A worker without a model must not take chunks: stop it (warm shutdown of the
        # whole worker) so its supervisor restarts it and healthy workers get the work.
        os.kill(os.getpid() if _state.get("solo") else os.getppid(), signal.SIGTERM)
        raise
    metrics().model_load_seconds.set(_state["model_load_seconds"])
    _state["heartbeat"] = Heartbeat(settings, name, {
        "model": settings.model,
        "device": str(tagger.encoder.device),
        "precision": str(tagger.encoder.dtype).removeprefix("torch."),
        "lanes": tagger.lanes,
        "pid": os.getpid(),
        "model_load_seconds": round(_state["model_load_seconds"], 3),
    }).start()


def metrics() -> WorkerMetrics:
    if "metrics" not in _state:
        _state["metrics"] = WorkerMetrics()
    return _state["metrics"]


def worker_settings() -> Settings:
    if "settings" not in _state:
        _state["settings"] = Settings()
    return _state["settings"]


def worker_tagger():
    """This process's Tagger (model + cached taxonomy embeddings), created on first use."""
    if "tagger" not in _state:
        import torch

        from ..tagger import Tagger

        threads = int(os.environ.get("ZSTAGGER_TORCH_THREADS", "0"))
        if threads:
            torch.set_num_threads(threads)
        started = time.monotonic()
        settings = worker_settings()
        _state["tagger"] = Tagger(settings=settings, loader_threads=settings.loader_threads or threads or None)
        _state["model_load_seconds"] = time.monotonic() - started
        log.info("zstagger: loaded %s in %.1fs", settings.model, _state["model_load_seconds"])
    return _state["tagger"]


def worker_store() -> JobStore:
    if "store" not in _state:
        _state["store"] = JobStore(connect(worker_settings().redis_url))
    return _state["store"]


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
