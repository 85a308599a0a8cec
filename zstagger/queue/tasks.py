"""The worker's one task: tag a chunk of images with the engine, store one result per input.

Thin by design: the Tagger does the work, :mod:`.worker` owns the process's model and
connections, :mod:`.jobstore` owns the job's keys, :mod:`.messages` checks the arguments.
Here: what to tag; what every task does alike (the retry policy, riding out Redis) is
:mod:`.taskrules`'s; long videos go off in time ranges (:mod:`.ranges`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.exceptions import Reject

from ..errors import ExamplesError, TaxonomyError, ZstaggerError, record_type
from ..registry import resolve_each
from ..results import MultiTagResult, TagResult
from ..settings import Settings
from ..taxonomy import Taxonomy
from .celery_app import TASK_NAME, app
from ..images import describe
from .messages import ChunkRequest, ListingPage, decode_item, decode_ref
from .notify import job_finished
from .sinking import sink_chunk, sink_mark
from .jobstore import ENQUEUE_STALL, ENQUEUING
from .taskrules import _refuse, _with_redis, task_taxonomy, redis_patience, retry_delay  # noqa: F401 (retry_delay: here before)
from .worker import metrics, shutting_down, worker_job_store, worker_settings, worker_tagger

log = logging.getLogger(__name__)


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


def _failed(image: str, names: list[str], several: bool, kind: str, message: str,
            provenances: list[Any] | None = None) -> TagResult | MultiTagResult:
    """The error record of an input no taxonomy of the chunk could tag (one per taxonomy when several)."""
    each = [TagResult.failed(image, name, kind, message, provenance=provenances[k] if provenances else None)
            for k, name in enumerate(names)]
    return MultiTagResult(image=image, taxonomies=dict(zip(names, each))) if several else each[0]


def _gave_up(result: Any, attempts: int) -> TagResult | MultiTagResult:
    """A transient failure's record once its retries are spent: the same error, saying so."""
    if isinstance(result, MultiTagResult):
        return MultiTagResult(image=result.image, taxonomies={name: _gave_up(one, attempts)  # type: ignore[misc]
                                                             for name, one in result.taxonomies.items()})
    return TagResult.failed(result.image, result.taxonomy, result.error.type,
                            f"{result.error.message} (gave up after {attempts} attempts)", provenance=result.provenance)


def _list_page(page: ListingPage, settings: Settings) -> tuple[list[list[Any]], list[int]] | str:
    """The page's objects listed again, as ``[index, url]`` items, and the indices of objects
    listed at enqueue that are gone; or why the listing is refused. A listing that fails for a
    while (the store unreachable) gives the chunk back."""
    from ..errors import ImageLoadError
    from ..images import ImagePolicy
    from ..sources import ObjectRef, list_prefix, listing_order

    policy = ImagePolicy.from_settings(settings)
    urls: list[str] = []
    try:
        for objects in list_prefix(page.prefix, policy, page_size=min(1000, page.count + 16), start_after=page.after):
            order = listing_order(page.prefix)  # the store's order (Azure's is UTF-16's, not Python's)
            last = order(page.last)
            urls += [ObjectRef.of(item) for item in objects if order(item.url) <= last]  # size and version known: no HEAD
            if len(urls) >= page.count or order(objects[-1].url) >= last:
                break
    except ImageLoadError as exc:
        if exc.transient:
            raise Reject(f"listing {page.prefix} failed: {exc}; the chunk is left for redelivery", requeue=True) from exc
        return str(exc)
    items = [[index, url] for index, url in zip(page.indices, urls)]
    return items, list(page.indices)[len(items):]


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
    several = isinstance(chunk.taxonomy, list)  # several taxonomies in one pass: one MultiTagResult per input
    try:
        specs: list[Taxonomy] | None = [task_taxonomy(one, store.redis, settings) for one in chunk.specs]
        if several:
            resolve_each(specs)  # type: ignore[arg-type]  (each name once)
        spec_problem = ""
    except (ZstaggerError, ValueError, TypeError) as exc:
        # A spec no worker can tag with (forged, or from a producer that skipped validation):
        # its inputs become error records below, so the job still finishes and says why.
        specs, spec_problem = None, " ".join(str(exc).split())[:500]
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
            names = [str(one.get("name", "?"))[:100] for one in chunk.specs]
            refs_gone = [(index, _failed(f"{chunk.listing.prefix}#{index}", names, several, "source_refused", listed))
                         for index in chunk.listing.indices]
            finished = _with_redis(lambda: store.save(job_id, refs_gone, int(chunk.expires_at) or int(time.time() + settings.result_ttl),
                                                      sink_chunk=sink_mark(meta, chunk.sink_origin)),
                                   "storing results", settings)
            sink_chunk(self, store, meta, job_id, chunk.sink_origin, settings)
            if finished >= total:
                _with_redis(lambda: job_finished(store, app, job_id, "done"), "sending the job's notifications", settings)
            return {"tagged": 0, "refused": len(refs_gone)}
        items, gone = listed
    else:
        items = chunk.wire_items()
    _with_redis(lambda: store.mark_started(job_id), "marking the job started", settings)
    todo = set(_with_redis(lambda: store.missing(job_id, [item[0] for item in items] + gone), "reading the job's results", settings))

    pending = [item for item in items if item[0] in todo]
    if specs is None:
        names = [str(one.get("name", "?"))[:100] for one in chunk.specs]
        refused = [(item[0], _failed(describe(decode_ref(item[1])), names, several, record_type(TaxonomyError),
                                     f"the job's taxonomy spec is invalid: {spec_problem}")) for item in pending]
        finished = _with_redis(lambda: store.save(job_id, refused, int(chunk.expires_at) or int(time.time() + settings.result_ttl),
                                                  sink_chunk=sink_mark(meta, chunk.sink_origin)),
                               "storing results", settings)
        sink_chunk(self, store, meta, job_id, chunk.sink_origin, settings)
        if finished >= total:
            _with_redis(lambda: job_finished(store, app, job_id, "done"), "sending the job's notifications", settings)
        return {"tagged": 0, "refused": len(refused)}
    try:
        tagger = worker_tagger()
    except Exception as exc:  # no model in this process: give the chunk back, untouched
        raise Reject(f"model not loaded: {exc}", requeue=True) from exc
    queue = (self.request.delivery_info or {}).get("routing_key") or None
    from .ranges import fan_out  # (imports this module's helpers)

    # Long videos go off in time ranges, for several workers; their results come from the ranges.
    # (With several taxonomies, or a text to fuse, a video is judged whole by this worker.)
    fanned = set() if several else fan_out(tagger, settings, job_id, [item[:2] for item in pending
                                                                       if len(item) < 3 or item[2] is None],
                                           chunk.taxonomy, chunk.top_k, chunk.expires_at, queue, chunk.sink_origin)
    pending = [item for item in pending if item[0] not in fanned]
    # Split the chunk so that every encoder lane gets a share of it.
    share = max(1, -(-len(pending) // tagger.lanes))
    started = time.perf_counter()
    before, unrecorded = tagger.cache_stats(), tagger.unrecorded
    refs = [decode_item(item[1], item[2] if len(item) > 2 else None) for item in pending]
    spec = specs[0]
    try:  # compiled once per process; its image vectors may have to be read from Redis
        for one in specs:
            spec = one
            _with_redis(lambda: tagger.classifier(one), "reading the taxonomy's image vectors", settings)
    except ExamplesError as exc:  # never tag with text alone when the images cannot be had: say so per input
        log.error("zstagger: taxonomy %s cannot be used here: %s", spec.name, exc)
        results = [_failed(describe(ref), [one.name for one in specs], several, record_type(exc), str(exc),
                           [tagger.provenance(one) for one in specs]) for ref in refs]
    else:
        # With an embedding store (ZSTAGGER_STORE) the Tagger records the chunk's images under
        # this job in one write at the end of tag(): idempotent, so a redelivered chunk rewrites
        # the same rows; if the store is away, the images are counted and logged as unrecorded
        # and the results below are saved all the same.
        # A worker told to stop (SIGTERM: scale-in, a deploy, systemd stop) reads no further
        # image: what it has tagged is stored, the rest is handed back to the queue at once.
        chosen = {"taxonomies": specs} if several else {"taxonomy": specs[0]}
        results = tagger.tag(refs, **chosen, top_k=chunk.top_k, batch_size=share, job_id=job_id,  # type: ignore[arg-type]
                             interrupted=shutting_down) if pending else []
    seconds = time.perf_counter() - started
    after = tagger.cache_stats()
    hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
    counts = {"cache_hits": hits} if pending and tagger.image_cache is not None else None

    from ..tagger import INTERRUPTED  # (the tagger module is loaded by now: worker_tagger above)

    final: list[tuple[int, Any]] = []
    again: list[list[Any]] = []
    handed_back: list[list[Any]] = []
    for item, result in zip(pending, results):
        index = item[0]
        if result.error is not None and result.error.type == INTERRUPTED:
            handed_back.append(item)
            continue
        if result.error is not None and result.error.transient:
            if chunk.attempt < settings.max_retries:
                again.append(item)
                continue
            result = _gave_up(result, chunk.attempt + 1)
        final.append((index, result))
    for index in gone:  # listed when the job was made, not there now
        if index in todo:
            final.append((index, _failed(f"{chunk.listing.prefix}#{index}", [one.name for one in specs], several,  # type: ignore[union-attr]
                                         "not_found", "an object listed when the job was enqueued is no longer there")))
    expires_at = int(chunk.expires_at) if chunk.expires_at else int(time.time() + settings.result_ttl)
    finished = _with_redis(lambda: store.save(job_id, final, expires_at, counts, sink_mark(meta, chunk.sink_origin)),
                           "storing results", settings)
    # Every stored result of the chunk's inputs, under the chunk as enqueued (its retries and
    # hand-backs write the same file again once theirs are stored).
    sink_chunk(self, store, meta, job_id, chunk.sink_origin, settings)
    if handed_back:  # as it came, for another worker now (not after the visibility timeout)
        _with_redis(lambda: tag_chunk.apply_async(
            args=(job_id, handed_back, chunk.taxonomy),
            kwargs={"top_k": chunk.top_k, "expires_at": chunk.expires_at, "attempt": chunk.attempt,
                    "origin": list(chunk.sink_origin)},
            queue=queue,
        ), "handing the rest of the chunk back", settings)
        log.warning("zstagger: shutting down: stored %d result(s) of job %s, handed %d image(s) back to the queue",
                    len(final), job_id, len(handed_back))
    if again:
        _with_redis(lambda: tag_chunk.apply_async(
            args=(job_id, again, chunk.taxonomy),
            kwargs={"top_k": chunk.top_k, "expires_at": chunk.expires_at, "attempt": chunk.attempt + 1,
                    "origin": list(chunk.sink_origin)},
            countdown=retry_delay(chunk.attempt + 1, settings.visibility_timeout),
            queue=queue,
        ), "queueing a retry", settings)
    if finished >= total:  # also when a redelivered chunk finds everything done: notifications are at least once
        _with_redis(lambda: job_finished(store, app, job_id, "done"), "sending the job's notifications", settings)
    metrics().chunk_done(",".join(one.name for one in specs), [result for _, result in final], seconds, len(again))
    if counts is not None:
        metrics().store_done(hits, misses, tagger.unrecorded - unrecorded)
    outcome = {"tagged": len(final), "retrying": len(again), "skipped": len(items) - len(pending) - len(fanned)}
    if fanned:
        outcome["split"] = len(fanned)
    return {**outcome, "handed_back": len(handed_back)} if handed_back else outcome
