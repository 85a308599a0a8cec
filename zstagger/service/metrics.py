"""Prometheus metrics of the HTTP service: requests, latency, batch sizes, queue wait, images.

``/metrics`` on the API's port needs an API key, like every ``/v1`` route. For a scraper
without one, ``ZSTAGGER_API_METRICS_PORT`` serves them on a port of their own (on
``ZSTAGGER_METRICS_ADDRESS``, loopback unless told otherwise). With several server processes
(``zstagger serve --workers N``), or that port, the metrics are written as prometheus_client
multiprocess files and aggregated when scraped, as workers do. A client that leaves in the
middle of its request is counted with status 499 (nginx's "client closed request"), not 500.
"""

from __future__ import annotations

import os
import time


class ServiceMetrics:
    LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
    BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 128, 256)

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # One registry per app; in multiprocess mode metrics go to files and are collected at scrape time.
        self.registry = None if self.multiprocess else CollectorRegistry()
        kw = {} if self.multiprocess else {"registry": self.registry}
        self.requests = Counter("zstagger_http_requests", "HTTP requests answered", ["route", "method", "status"], **kw)
        self.latency = Histogram("zstagger_http_request_seconds", "Time to answer an HTTP request", ["route"],
                                 buckets=self.LATENCY_BUCKETS, **kw)
        self.batch_size = Histogram("zstagger_http_batch_size", "Images per model batch (micro-batching)",
                                    buckets=self.BATCH_BUCKETS, **kw)
        self.queue_wait = Histogram("zstagger_http_queue_wait_seconds",
                                    "Time a preprocessed image waited for a model batch", buckets=self.LATENCY_BUCKETS, **kw)
        self.images = Counter("zstagger_http_images", "Images tagged through the HTTP API", ["outcome"], **kw)
        self.refused = Counter("zstagger_http_overloaded", "Requests refused with 503 because too many images were in flight", **kw)
        self.media_frames = Counter("zstagger_http_media_frames", "Frames of animations and videos embedded, each admitted "
                                    "against ZSTAGGER_MAX_PENDING_IMAGES like an image", **kw)

    def observe_batch(self, size: int, wait: float) -> None:
        self.batch_size.observe(size)
        self.queue_wait.observe(wait)

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self.multiprocess:
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def serve_metrics_port(port: int, address: str) -> None:
    """Serve every server process's metrics on ``address:port`` without a key (ZSTAGGER_API_METRICS_PORT);
    multiprocess mode must be on (:func:`zstagger.queue.metrics.prepare_metrics_dir`). Raises OSError."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    start_http_server(port, addr=address, registry=registry)


class RequestMetrics:
    """ASGI middleware: count and time every request by its route template (not its raw path)."""

    def __init__(self, app, metrics: ServiceMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def record_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
