"""The Celery app and its configuration, nothing else.

    celery -A zstagger.queue.celery_app worker -Q interactive,bulk

works as well as ``zstagger worker``. Configuration comes from ``ZSTAGGER_*`` variables
(:class:`zstagger.settings.Settings`).
"""

from __future__ import annotations

import ssl
from urllib.parse import parse_qs, urlsplit

from celery import Celery
from kombu import Queue

from ..settings import Settings

QUEUE_NAMES = ("interactive", "bulk")
DEFAULT_QUEUE = "bulk"
TASK_NAME = "zstagger.tag_chunk"
RANGE_TASK_NAME = "zstagger.tag_range"  # one time range of a long video (see zstagger.queue.ranges)
SINK_TASK = "zstagger.deliver_sink"  # a chunk written to its job's sink again (see zstagger.queue.sinking)
# kombu's Redis transport, hardened against malformed queue items and a full Redis.
REDIS_TRANSPORT = "zstagger.queue.transport:Transport"


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings()
    app = Celery("zstagger", include=["zstagger.queue.tasks", "zstagger.queue.ranges", "zstagger.queue.webhooks",
                                     "zstagger.queue.sinking"])
    vt = settings.visibility_timeout
    app.conf.update(
        broker_url=settings.redis_url,
        broker_transport=REDIS_TRANSPORT if urlsplit(settings.redis_url).scheme in ("redis", "rediss") else None,
        broker_use_ssl=_ssl_options(settings.redis_url),
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a Redis restart is waited out, never fatal
        broker_transport_options={
            "visibility_timeout": vt,
            # Sweep for abandoned (unacked) chunks often enough that recovery takes about
            # one visibility timeout, not kombu's default 100 s on top of it.
            "unacked_restore_interval": max(1, min(10, vt // 10)),
            "unacked_restore_throttle": 1,
            # The sweep takes a lock in Redis; a worker killed during its sweep (every second
            # or so) leaves it held for this long, and no worker restores anything meanwhile:
            # kombu's 300 s would add five minutes to a kill -9's recovery.
            "unacked_mutex_expire": max(5, min(60, vt)),
            "socket_connect_timeout": 5,
            "socket_timeout": 30,
            "socket_keepalive": True,
            "health_check_interval": 10,
            "retry_on_timeout": True,
        },
        # JSON only: pickle from anyone who can write to Redis would be remote code execution.
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # Results live in zstagger's own Redis keys (per image, deduplicated), not Celery's backend.
        task_ignore_result=True,
        # A chunk is acknowledged only once its results are stored; a worker that dies
        # mid-chunk leaves it to be redelivered.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Each process loads the model when it starts; give it time (Celery's default is 4 s).
        worker_proc_alive_timeout=300,
        task_queues=[Queue(name) for name in QUEUE_NAMES],
        task_default_queue=DEFAULT_QUEUE,
        task_create_missing_queues=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


def _ssl_options(url: str) -> dict | None:
    parts = urlsplit(url)
    if parts.scheme != "rediss" or "ssl_cert_reqs" in parse_qs(parts.query):
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED}


app = make_app()
_apps_by_url = {app.conf.broker_url: app}


def app_for(settings: Settings) -> Celery:
    """The app for a producer's settings (tests and multi-cluster producers use several)."""
    if settings.redis_url not in _apps_by_url:
        _apps_by_url[settings.redis_url] = make_app(settings)
    return _apps_by_url[settings.redis_url]
