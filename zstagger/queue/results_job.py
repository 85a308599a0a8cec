"""A job made of results computed elsewhere (``zstagger retag --as-job``), written straight into
the job store: ``zstagger results`` and the HTTP API then serve it like any queued job.

The results are written first and the job record last, so the job appears when it is
complete (state ``done``); a run that stops half way leaves no job, only results that
expire with ``ZSTAGGER_RESULT_TTL``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from ..settings import Settings
from ..taxonomy import Taxonomy
from .client import Job, _reachable, open_job_store
from .jobstore import new_job_id


def save_as_job(pages: Iterable[list[str]], taxonomy: Taxonomy, settings: Settings, source: str) -> Job:
    """Store result lines (JSON, none of them errors), page by page, as a finished job."""
    store = open_job_store(settings)
    job_id = new_job_id()
    expires_at = int(time.time() + settings.result_ttl)
    total = 0
    for lines in pages:
        items = [(total + i, line, False) for i, line in enumerate(lines)]
        _reachable(settings, lambda items=items: store.save_lines(job_id, items, expires_at))
        total += len(lines)
    _reachable(settings, lambda: store.create(job_id, total, expires_at, chunks=0, queue="", taxonomy=taxonomy.name,
                                              fingerprint=taxonomy.fingerprint, source=source, started=time.time()))
    return Job(job_id, settings, store)
