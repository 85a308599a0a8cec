"""Prometheus metrics: per-process counters written as multiprocess files, served by the
worker's parent together with queue depth read from Redis at scrape time."""

from __future__ import annotations

import glob
import logging
import os
import tempfile

from ..results import MultiTagResult
from ..settings import Settings
from .health import queue_stats
from .jobstore import QueueUnavailableError

log = logging.getLogger(__name__)


def prepare_metrics_dir() -> str:
    """In the worker's parent, before the pool forks: multiprocess mode for every metric created after this."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        for stale in glob.glob(os.path.join(directory, "*.db")):
            os.remove(stale)
    else:
        directory = tempfile.mkdtemp(prefix="zstagger-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    import sys

    values = sys.modules.get("prometheus_client.values")
    if values is not None:
        # Already imported (celery's CLI loads plugins such as flower, which imports it), so it
        # chose single-process values at import: choose again, or every pool process's metrics
        # would stay in that process and never be served.
        values.ValueClass = values.get_value_class()
    return directory


def serve_metrics(settings: Settings) -> None:
    """Serve every pool process's metrics plus queue depth on settings.metrics_address:metrics_port."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    registry.register(_QueueCollector(settings))
    try:
        start_http_server(settings.metrics_port, addr=settings.metrics_address, registry=registry)
    except OSError as exc:  # e.g. a second worker on this machine with the same port
        log.error("zstagger: cannot serve metrics on %s:%d (%s); set ZSTAGGER_METRICS_PORT per worker "
                  "(and ZSTAGGER_METRICS_ADDRESS to an address of this machine)", settings.metrics_address, settings.metrics_port, exc)
        return
    log.info("zstagger: Prometheus metrics on %s:%d/metrics", settings.metrics_address, settings.metrics_port)


class _QueueCollector:
    def __init__(self, settings: Settings):
        self.settings = settings

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("zstagger_redis_up", "1 if Redis answered this scrape")
        depth = GaugeMetricFamily("zstagger_queue_depth", "Chunks waiting in each queue", labels=["queue"])
        unacked = GaugeMetricFamily("zstagger_chunks_unacked", "Chunks delivered to workers, not yet acknowledged")
        dead = GaugeMetricFamily("zstagger_dead_letter_items", "Malformed queue items kept in zstagger:dead-letter")
        try:
            stats = queue_stats(self.settings)
        except QueueUnavailableError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        for name, count in stats["queues"].items():
            depth.add_metric([name], count)
        unacked.add_metric([], stats["unacked"])
        dead.add_metric([], stats["dead_letter"])
        yield from (up, depth, unacked, dead)


class WorkerMetrics:
    """Per-process metrics; created after the fork so each process writes its own files."""

    LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

    def __init__(self):
        from prometheus_client import Counter, Gauge, Histogram

        self.images = Counter("zstagger_images", "Images processed", ["taxonomy", "outcome"])
        self.errors = Counter("zstagger_image_errors", "Images that became error records, by error type", ["type"])
        self.verdicts = Counter("zstagger_verdicts", "Moderation verdicts", ["taxonomy", "verdict"])
        self.retries = Counter("zstagger_retried_images", "Images sent round again after a transient failure")
        self.chunks = Counter("zstagger_chunks", "Chunks processed", ["outcome"])
        self.chunk_seconds = Histogram("zstagger_chunk_seconds", "Time to tag one chunk (one batch)", buckets=self.LATENCY_BUCKETS)
        self.image_seconds = Histogram("zstagger_image_seconds", "Tagging time per image (chunk time / images)",
                                       buckets=self.LATENCY_BUCKETS)
        self.model_load_seconds = Gauge("zstagger_model_load_seconds", "Seconds this worker took to load its model",
                                        multiprocess_mode="max")
        self.cache_hits = Counter("zstagger_image_cache_hits",
                                  "Images whose embedding came from the embedding store or image cache (not decoded, not encoded)")
        self.cache_misses = Counter("zstagger_image_cache_misses", "Images read and encoded by a worker with a store or cache")
        self.unrecorded = Counter("zstagger_store_unrecorded_images",
                                  "Images tagged but not recorded in the embedding store (it was unreachable); their results are saved")

    def chunk_done(self, taxonomy: str, results, seconds: float, retried: int) -> None:
        self.chunks.labels("done").inc()
        self.chunk_seconds.observe(seconds)
        if results:
            per_image = seconds / len(results)
            for outer in results:
                self.image_seconds.observe(per_image)
                if isinstance(outer, MultiTagResult):  # several taxonomies: each one's result, under its name
                    for name, result in outer.taxonomies.items():
                        self._count(name, result)
                else:
                    self._count(taxonomy, outer)
        if retried:
            self.retries.inc(retried)

    def _count(self, taxonomy: str, result) -> None:
        if result.error is not None:
            self.images.labels(taxonomy, "error").inc()
            self.errors.labels(result.error.type).inc()
        else:
            self.images.labels(taxonomy, "tagged").inc()
            if result.verdict is not None:
                self.verdicts.labels(taxonomy, result.verdict).inc()

    def store_done(self, hits: int, misses: int, unrecorded: int) -> None:
        """A chunk tagged with an embedding store or image cache: its hits, misses and images left unrecorded."""
        self.cache_hits.inc(hits)
        self.cache_misses.inc(misses)
        if unrecorded:
            self.unrecorded.inc(unrecorded)
