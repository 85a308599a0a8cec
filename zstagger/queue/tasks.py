"""The worker's one task: tag a chunk of images with the engine, store one result per input.

Thin by design: the Tagger does the work, :mod:`.worker` owns the process's model and
connections, :mod:`.jobstore` owns the job's keys, :mod:`.messages` checks the arguments.
Here: what to tag, and the retry policy.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

import redis
from celery.exceptions import Reject
from kombu.exceptions import OperationalError

from ..errors import ExamplesError, TaxonomyError, ZstaggerError, record_type
from ..results import TagResult
from ..settings import Settings
from ..taxonomy import Taxonomy
from .celery_app import TASK_NAME, app
from ..images import describe
from .messages import ChunkRequest, ListingPage, decode_ref
from .notify import job_finished
from .jobstore import ENQUEUE_STALL, ENQUEUING, describe_failure
from .worker import metrics, shutting_down, worker_job_store, worker_settings, worker_tagger

log = logging.getLogger(__name__)
T = TypeVar("T")


@lru_cache(maxsize=64)
def _taxonomy(spec_json: str) -> Taxonomy:
    return Taxonomy.parse(json.loads(spec_json))


def retry_delay(attempt: int, visibility_timeout: float | None = None) -> float:
    """Backoff before retry number ``attempt`` (1-based): 2, 4, 8, ... seconds, at most 60,
    and at most a third of the visibility timeout.

    A retry is sent with a countdown; the worker that receives it holds it unacknowledged
    until it is due, so a countdown near the visibility timeout would have it redelivered
    to a second worker and run twice.
    """
    delay = float(min(60, 2**attempt))
    return min(delay, visibility_timeout / 3) if visibility_timeout else delay


def redis_patience(settings: Settings) -> float:
    """How long a task waits out a Redis failure (unreachable, refusing writes) before it
    gives the chunk back: well inside the visibility timeout, so it is not redelivered meanwhile."""
    return min(30.0, settings.visibility_timeout / 3)


def _with_redis(call: Callable[[], T], doing: str, settings: Settings) -> T:
    """``call()``, retried with backoff while Redis fails; then the chunk is requeued, never dropped."""
    deadline = time.monotonic() + redis_patience(settings)
    delay = 0.5
    while True:
        try:
            return call()
        except (redis.RedisError, OperationalError) as exc:
            cause = exc.__cause__ if isinstance(exc, OperationalError) and exc.__cause__ is not None else exc
            what = describe_failure(cause)
            if time.monotonic() + delay > deadline:
                raise Reject(f"{what} while {doing}; the chunk is left for redelivery", requeue=True) from exc
            log.warning("zstagger: %s while %s; retrying in %.1fs", what, doing, delay)
            time.sleep(delay)
            delay = min(2 * delay, 8.0)


def _wait_until_enqueued(store, job_id: str, meta: dict[str, str], settings: Settings) -> dict[str, str] | None:
    """The job's record once its producer has queued every chunk (see :data:`.store.ENQUEUING`):
    empty if the enqueue failed and the job was deleted, None if the producer stopped part way.
    Waits a while; a job still being enqueued then gives the chunk back to the queue."""
    deadline = time.monotonic() + redis_patience(settings)
    while ENQUEUING in meta:
        try:
            progress = float(meta[ENQUEUING])
        except ValueError:
            progress = 0.0
        if time.time() - progress > ENQUEUE_STALL:
            return None
        if time.monotonic() >= deadline:
            raise Reject(f"job {job_id} is still being enqueued; the chunk is given back", requeue=True)
        time.sleep(0.1)
        meta = _with_redis(lambda: store.meta(job_id), "reading the job", settings)
    return meta


def _refuse(task_id: str | None, problem: Exception) -> dict[str, int]:
    reason = " ".join(str(problem).split())[:500]  # one line, bounded: the content comes from whoever wrote to Redis
    log.error("zstagger: refused a malformed chunk (task %s): %s", task_id, reason)
    return {"refused": 1}


def _list_page(page: ListingPage, settings: Settings) -> tuple[list[list[Any]], list[int]] | str:
    """The page's objects listed again, as ``[index, url]`` items, and the indices of objects
    listed at enqueue that are gone; or why the listing is refused. A listing that fails for a
    while (the store unreachable) gives the chunk back."""
    from ..errors import ImageLoadError
    from ..images import ImagePolicy
    from ..sources import ObjectRef, list_prefix

    policy = ImagePolicy.from_settings(settings)
    urls: list[str] = []
    try:
        for objects in list_prefix(page.prefix, policy, page_size=min(1000, page.count + 16), start_after=page.after):
            urls += [ObjectRef.of(item) for item in objects if item.url <= page.last]  # size and version known: no HEAD
            if len(urls) >= page.count or objects[-1].url >= page.last:
                break
    except ImageLoadError as exc:
        if exc.transient:
            raise Reject(f"listing {page.prefix} failed: {exc}; the chunk is left for redelivery", requeue=True) from exc
        return str(exc)
    items = [[index, url] for index, url in zip(page.indices, urls)]
    return items, list(page.indices)[len(items):]


def _to_sink(store, url: str, job_id: str, indices: list[int], settings: Settings) -> None:
    """The chunk's stored results (all of them, also on a delivery that found them done) to the job's sink."""
    from ..errors import SinkError
    from ..sinks import chunk_name, deliver_chunk

    if not indices:
        return
    wanted = set(indices)
    lines = [(index, line) for index, line in _with_redis(
        lambda: list(store.iter_results(job_id, max(wanted) + 1, start=min(wanted))), "reading results for the sink", settings)
        if index in wanted and line is not None]
    try:
        deliver_chunk(url, job_id, chunk_name(indices), lines)
    except SinkError as exc:
        log.error("zstagger: %s", exc)
        with contextlib.suppress(redis.RedisError):
            store.update(job_id, sink_last_error=str(exc)[:500])


@app.task(bind=True, name=TASK_NAME, typing=False)
def tag_chunk(self, *args: Any, **kwargs: Any) -> dict[str, int]:
    """``tag_chunk(job_id, items, taxonomy, top_k=None, expires_at=0, attempt=0)``: tag
    ``items`` (``[index, reference]`` pairs) and store one result per index.

    Arguments are checked first; a message that is not what the producer sends is refused
    (logged, acknowledged, nothing stored). Bad images become error records. Transient
    failures (network timeouts) are sent round again, alone, after a backoff, up to
    ``ZSTAGGER_MAX_RETRIES`` times; then they are stored as error records saying so. If
    Redis fails (unreachable, or out of memory) the task waits it out for a while, then
    the chunk is requeued, never dropped.
    """
    settings = worker_settings()
    store = worker_job_store()
    try:
        chunk = ChunkRequest.from_message(args, kwargs)
    except (ZstaggerError, ValueError, TypeError) as exc:
        return _refuse(self.request.id, exc)
    try:
        spec: Taxonomy | None = _taxonomy(json.dumps(chunk.taxonomy, sort_keys=True))
        spec_problem = ""
    except (ZstaggerError, ValueError, TypeError) as exc:
        # A spec no worker can tag with (forged, or from a producer that skipped validation):
        # its inputs become error records below, so the job still finishes and says why.
        spec, spec_problem = None, " ".join(str(exc).split())[:500]
        log.error("zstagger: refused the taxonomy spec of a chunk of job %s: %s", chunk.job_id, spec_problem)

    job_id = chunk.job_id
    meta = _with_redis(lambda: store.meta(job_id), "reading the job", settings)
    if ENQUEUING in meta:
        meta = _wait_until_enqueued(store, job_id, meta, settings)
        if meta is None:
            log.warning("zstagger: job %s was abandoned part way through its enqueue (its producer stopped); "
                        "dropping a chunk of %d", job_id, chunk.size)
            return {"tagged": 0, "skipped": chunk.size}
    total = int(meta["total"]) if meta.get("total", "").isdigit() else None
    if chunk.expires_at and time.time() > chunk.expires_at or total is None:
        log.warning("zstagger: job %s has expired or was deleted; dropping a chunk of %d", job_id, chunk.size)
        return {"tagged": 0, "skipped": chunk.size}
    if "cancelled" in meta:
        log.info("zstagger: job %s was cancelled; skipping a chunk of %d", job_id, chunk.size)
        return {"tagged": 0, "skipped": chunk.size}
    try:
        chunk.check_indices(total)
    except ZstaggerError as exc:
        return _refuse(self.request.id, exc)
    gone: list[int] = []
    if chunk.listing is not None:
        listed = _list_page(chunk.listing, settings)
        if isinstance(listed, str):  # the listing is refused: every input of the page says why
            refs_gone = [(index, TagResult.failed(f"{chunk.listing.prefix}#{index}", str(chunk.taxonomy.get("name", "?"))[:100],
                                                  "source_refused", listed)) for index in chunk.listing.indices]
            finished = _with_redis(lambda: store.save(job_id, refs_gone, int(chunk.expires_at) or int(time.time() + settings.result_ttl)),
                                   "storing results", settings)
            if finished >= total:
                _with_redis(lambda: job_finished(store, app, job_id, "done"), "sending the job's notifications", settings)
            return {"tagged": 0, "refused": len(refs_gone)}
        items, gone = listed
    else:
        items = chunk.wire_items()
    _with_redis(lambda: store.mark_started(job_id), "marking the job started", settings)
    todo = set(_with_redis(lambda: store.missing(job_id, [index for index, _ in items] + gone), "reading the job's results", settings))

    pending = [(index, ref) for index, ref in items if index in todo]
    if spec is None:
        name = str(chunk.taxonomy.get("name", "?"))[:100]
        refused = [(index, TagResult.failed(describe(decode_ref(ref)), name, record_type(TaxonomyError),
                                            f"the job's taxonomy spec is invalid: {spec_problem}")) for index, ref in pending]
        finished = _with_redis(lambda: store.save(job_id, refused, int(chunk.expires_at) or int(time.time() + settings.result_ttl)),
                               "storing results", settings)
        if finished >= total:
            _with_redis(lambda: job_finished(store, app, job_id, "done"), "sending the job's notifications", settings)
        return {"tagged": 0, "refused": len(refused)}
    try:
        tagger = worker_tagger()
    except Exception as exc:  # no model in this process: give the chunk back, untouched
        raise Reject(f"model not loaded: {exc}", requeue=True) from exc
    # Split the chunk so that every encoder lane gets a share of it.
    share = max(1, -(-len(pending) // tagger.lanes))
    started = time.perf_counter()
    before, unrecorded = tagger.cache_stats(), tagger.unrecorded
    refs = [decode_ref(ref) for _, ref in pending]
    try:  # compiled once per process; its image vectors may have to be read from Redis
        _with_redis(lambda: tagger.classifier(spec), "reading the taxonomy's image vectors", settings)
    except ExamplesError as exc:  # never tag with text alone when the images cannot be had: say so per input
        log.error("zstagger: taxonomy %s cannot be used here: %s", spec.name, exc)
        provenance = tagger.provenance(spec)
        results = [TagResult.failed(describe(ref), spec.name, record_type(exc), str(exc), provenance=provenance)
                   for ref in refs]
    else:
        # With an embedding store (ZSTAGGER_STORE) the Tagger records the chunk's images under
        # this job in one write at the end of tag(): idempotent, so a redelivered chunk rewrites
        # the same rows; if the store is away, the images are counted and logged as unrecorded
        # and the results below are saved all the same.
        # A worker told to stop (SIGTERM: scale-in, a deploy, systemd stop) reads no further
        # image: what it has tagged is stored, the rest is handed back to the queue at once.
        results = tagger.tag(refs, taxonomy=spec, top_k=chunk.top_k, batch_size=share, job_id=job_id,
                             interrupted=shutting_down) if pending else []
    seconds = time.perf_counter() - started
    after = tagger.cache_stats()
    hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
    counts = {"cache_hits": hits} if pending and tagger.image_cache is not None else None

    from ..tagger import INTERRUPTED  # (the tagger module is loaded by now: worker_tagger above)

    final: list[tuple[int, TagResult]] = []
    again: list[list[Any]] = []
    handed_back: list[list[Any]] = []
    for (index, ref), result in zip(pending, results):
        if result.error is not None and result.error.type == INTERRUPTED:
            handed_back.append([index, ref])
            continue
        if result.error is not None and result.error.transient:
            if chunk.attempt < settings.max_retries:
                again.append([index, ref])
                continue
            result = TagResult.failed(
                result.image, result.taxonomy, result.error.type,
                f"{result.error.message} (gave up after {chunk.attempt + 1} attempts)", provenance=result.provenance,
            )
        final.append((index, result))
    for index in gone:  # listed when the job was made, not there now
        if index in todo:
            final.append((index, TagResult.failed(f"{chunk.listing.prefix}#{index}", spec.name, "not_found",  # type: ignore[union-attr]
                                                  "an object listed when the job was enqueued is no longer there")))
    expires_at = int(chunk.expires_at) if chunk.expires_at else int(time.time() + settings.result_ttl)
    finished = _with_redis(lambda: store.save(job_id, final, expires_at, counts), "storing results", settings)
    if meta.get("sink"):
        not_yet = {index for index, _ in again} | {index for index, _ in handed_back}
        indices = [index for index, _ in items if index not in not_yet] + gone
        _to_sink(store, meta["sink"], job_id, indices, settings)
    queue = (self.request.delivery_info or {}).get("routing_key") or None
    if handed_back:  # as it came, for another worker now (not after the visibility timeout)
        _with_redis(lambda: tag_chunk.apply_async(
            args=(job_id, handed_back, chunk.taxonomy),
            kwargs={"top_k": chunk.top_k, "expires_at": chunk.expires_at, "attempt": chunk.attempt},
            queue=queue,
        ), "handing the rest of the chunk back", settings)
        log.warning("zstagger: shutting down: stored %d result(s) of job %s, handed %d image(s) back to the queue",
                    len(final), job_id, len(handed_back))
    if again:
        _with_redis(lambda: tag_chunk.apply_async(
            args=(job_id, again, chunk.taxonomy),
            kwargs={"top_k": chunk.top_k, "expires_at": chunk.expires_at, "attempt": chunk.attempt + 1},
            countdown=retry_delay(chunk.attempt + 1, settings.visibility_timeout),
            queue=queue,
        ), "queueing a retry", settings)
    if finished >= total:  # also when a redelivered chunk finds everything done: notifications are at least once
        _with_redis(lambda: job_finished(store, app, job_id, "done"), "sending the job's notifications", settings)
    metrics().chunk_done(spec.name, [result for _, result in final], seconds, len(again))
    if counts is not None:
        metrics().store_done(hits, misses, tagger.unrecorded - unrecorded)
    outcome = {"tagged": len(final), "retrying": len(again), "skipped": len(items) - len(pending)}
    return {**outcome, "handed_back": len(handed_back)} if handed_back else outcome
