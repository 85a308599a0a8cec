"""Async tagging through Celery workers on Redis.

Producer: :func:`enqueue` returns a :class:`Job`; workers: ``zstagger worker`` (or
``celery -A zstagger.queue.celery_app worker``).
"""

from .client import Job, JobTimeout, enqueue
from .jobstore import QueueUnavailableError, UnknownJobError

__all__ = ["Job", "JobTimeout", "QueueUnavailableError", "UnknownJobError", "enqueue"]
