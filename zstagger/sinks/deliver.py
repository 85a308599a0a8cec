"""One chunk's results to its sink: a few attempts with backoff, then a SinkError saying why."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from ..errors import SinkError, SourceRefusedError
from .base import with_ids
from .registry import sink_for

log = logging.getLogger(__name__)
ATTEMPTS = 3


def deliver_chunk(url: str, job_id: str, chunk: str, results: Sequence[tuple[int, str]],
                  attempts: int = ATTEMPTS) -> int:
    """Write ``results`` ((index, result JSON) pairs) as chunk ``chunk`` of job ``job_id`` to the
    sink of ``url``; returns the lines written. Retries with backoff; raises :class:`SinkError`."""
    try:
        sink = sink_for(url)
    except SourceRefusedError as exc:
        raise SinkError(str(exc)) from None
    lines = [with_ids(job_id, index, line) for index, line in sorted(results)]
    delay = 0.5
    for attempt in range(1, attempts + 1):
        try:
            sink.write(url, job_id, chunk, lines)
            return len(lines)
        except Exception as exc:  # noqa: BLE001  a plugin's failure is reported, not raised through the worker
            problem = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            if attempt == attempts:
                raise SinkError(f"result sink {url} failed for chunk {chunk} of job {job_id} after {attempts} "
                                f"attempts: {problem}") from None
            log.warning("zstagger: result sink %s failed for chunk %s of job %s (%s); retrying in %.1fs",
                        url, chunk, job_id, problem, delay)
            time.sleep(delay)
            delay *= 2
    return 0
