"""When a job finishes (done, or cancelled): its webhook event and its on-done task are sent.

At least once: whoever sees the job finish (the worker that stored its last result, a
redelivered chunk that finds nothing left to do, or the client that cancels it) sends the
notifications and then marks them sent, so a process killed in between only causes a
second send, never none. Webhook receivers de-duplicate by the event id, which is stable:
``evt_<job id>_<done|cancelled>``.
"""

from __future__ import annotations

import logging
import time

from celery import Celery

from .jobstore import JobStore

log = logging.getLogger(__name__)

WEBHOOK_TASK = "zstagger.deliver_event"
FINAL_STATES = ("done", "cancelled")


def event_id(job_id: str, state: str) -> str:
    return f"evt_{job_id}_{state}"


def job_finished(store: JobStore, app: Celery, job_id: str, state: str) -> bool:
    """Send the job's notifications for ``state`` unless they were sent; True if sent now."""
    if state not in FINAL_STATES:
        raise ValueError(f"not a final state: {state}")
    meta = store.meta(job_id)
    if not meta or f"notified_{state}" in meta:
        return False
    if state == "done" and "cancelled" in meta:
        return False  # a cancelled job's one event is "cancelled", even if its last chunks still finish
    queue = meta.get("queue") or None
    if meta.get("callback_url"):
        app.send_task(WEBHOOK_TASK, args=(job_id, state, time.time()), queue=queue)
    if meta.get("on_done_task"):
        app.send_task(meta["on_done_task"], args=(job_id, store.status(job_id)), queue=meta.get("on_done_queue") or None)
    store.claim(job_id, f"notified_{state}")
    log.info("zstagger: job %s is %s; notifications sent", job_id, state)
    return True
