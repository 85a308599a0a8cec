"""A worker process's life: what it sets up before and after the fork, its model, its end.

The model is loaded once per worker process, after the fork (``worker_process_init``), so
the parent never touches torch: forked torch thread pools and CUDA contexts break. The
parent shares the cores out and serves metrics; each child loads its Tagger, starts its
heartbeat, and reports a model it cannot load instead of taking chunks.

A worker that stops because of an error exits non-zero (so ``Restart=on-failure`` and
the like restart it): Celery already does for a crashed consumer; a process that could
not load its model marks the worker failed before asking it to stop.

Told to stop (SIGTERM: a warm shutdown), a worker does not make its chunk in hand wait:
images not yet read are handed back to the queue at once (see :func:`shutting_down`).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import time
from typing import Any

import redis
from celery import signals
from celery.exceptions import WorkerShutdown

from ..settings import Settings, redact_url
from .health import HEARTBEAT_PREFIX, Heartbeat, report_load_failure
from .metrics import WorkerMetrics, prepare_metrics_dir, serve_metrics
from .jobstore import JobStore, connect

EXIT_FAILURE = 1

log = logging.getLogger(__name__)

_state: dict[str, Any] = {}


@signals.worker_init.connect
def _prepare_parent(sender=None, **_: Any) -> None:
    """In the parent, before forking: share the cores out, name the worker, serve metrics."""
    concurrency = getattr(sender, "concurrency", None) or 1
    os.environ.setdefault("ZSTAGGER_TORCH_THREADS", str(max(1, (os.cpu_count() or 1) // concurrency)))
    os.environ["ZSTAGGER_WORKER_NAME"] = getattr(sender, "hostname", None) or f"zstagger@{os.uname().nodename}"
    _state["solo"] = "solo" in str(getattr(sender, "pool_cls", "")).lower()
    # Shared with the forked pool processes: set by one that cannot load its model.
    _state["failed"] = multiprocessing.Value("b", 0, lock=False)
    # Shared too: set here when the worker is told to stop, read by the chunk in hand.
    _state["stopping"] = multiprocessing.Value("b", 0, lock=False)
    settings = worker_settings()
    _say_if_redis_is_unreachable(settings)
    if settings.metrics_port:
        prepare_metrics_dir()
        serve_metrics(settings)


def _say_if_redis_is_unreachable(settings: Settings) -> None:
    """Celery retries forever without saying which setting to look at: one line that does."""
    try:
        connect(settings.redis_url, retries=0, timeout=3).ping()
    except redis.RedisError as exc:
        print(f"zstagger worker: cannot reach Redis at {redact_url(settings.redis_url)} (ZSTAGGER_REDIS_URL): {str(exc).rstrip('.')}; "
              "retrying until it answers", file=sys.stderr, flush=True)


@signals.worker_shutting_down.connect
def _stop_reading(**_: Any) -> None:
    """SIGTERM (warm shutdown: Kubernetes/KEDA scale-in, a deploy, systemd stop) or Ctrl-C, in
    the main process: a chunk in hand reads no further image, stores what it has tagged and
    hands the rest back to the queue, so the worker stops in about one image's time and no
    chunk waits out the visibility timeout (see :func:`shutting_down`)."""
    flag = _state.get("stopping")
    if flag is not None:
        flag.value = 1


def shutting_down() -> bool:
    """True once this worker has been told to stop (any of its processes may ask)."""
    flag = _state.get("stopping")
    return bool(flag is not None and flag.value)


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
def _forget_worker(sender=None, **_: Any) -> None:
    """Warm shutdown: drop the heartbeat now, so health checks stop routing work here; and
    exit non-zero if a process could not load its model."""
    failed = _state.get("failed")
    if failed is not None and failed.value and sender is not None and not getattr(sender, "exitcode", None):
        sender.exitcode = EXIT_FAILURE
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
        # whole worker, exit status 1) so its supervisor restarts it and healthy workers get the work.
        if _state.get("failed") is not None:
            _state["failed"].value = 1
        if _state.get("solo"):  # this process is the worker: stop it from inside
            raise WorkerShutdown(EXIT_FAILURE) from exc
        os.kill(os.getppid(), signal.SIGTERM)
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
        from .vectors import RedisPackLoader

        started = time.monotonic()
        settings = worker_settings()
        _state["tagger"] = Tagger(settings=settings, loader_threads=settings.loader_threads or threads or None,
                                  vector_loader=RedisPackLoader(worker_job_store().redis))
        _state["model_load_seconds"] = time.monotonic() - started
        log.info("zstagger: loaded %s in %.1fs", settings.model, _state["model_load_seconds"])
    return _state["tagger"]


def worker_job_store() -> JobStore:
    if "store" not in _state:
        _state["store"] = JobStore(connect(worker_settings().redis_url))
    return _state["store"]
