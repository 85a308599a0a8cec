"""The producer side: ``job = enqueue(images, taxonomy=...)``, ``job.status()``, ``job.results()``."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import redis

from ..errors import ConfigurationError, FileReadError, ImageLoadError, JobTimeout, SourceRefusedError
from ..extras import missing_from
from ..files import read_regular_file
from ..images import ImageInput, NamedBytes, iter_inputs
from ..registry import resolve_each, resolve_taxonomy
from ..results import MultiTagResult, TagResult, read_result
from ..settings import Settings
from ..sinks import check_sink
from ..sources import check_reference, is_prefix, is_source_url, list_prefix
from ..taxonomy import Taxonomy
from .celery_app import REDIS_TRANSPORT, TASK_NAME, app_for
from .messages import encode_item
from .notify import FINAL_STATES, job_finished
from .jobstore import (
    ENQUEUE_BEAT, ENQUEUING, JobStore, QueueUnavailableError, check_job_id, connect, new_job_id, redis_failure,
)
from .vectors import read_packs, spec_for_workers, spec_message

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def check_callback_url(url: str, settings: Settings) -> str:
    """A webhook URL the workers may call: http(s), a host, allowed by the address policy, and
    a secret to sign with (the one rule for the Python API, the CLI and the HTTP service)."""
    from urllib.parse import urlsplit

    from ..errors import UrlBlockedError
    from ..net.addresses import resolve_allowed

    if settings.webhook_secret is None or not settings.webhook_secret.get_secret_value():
        raise ConfigurationError("a callback URL needs ZSTAGGER_WEBHOOK_SECRET (events are signed with it; "
                                 "set the same secret on the workers)")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"malformed callback URL {url!r}: {exc}") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise ConfigurationError(f"callback URL {url!r} is not an http(s) URL with a host")
    try:
        resolve_allowed(host, port or (443 if parts.scheme.lower() == "https" else 80), settings.allow_private_urls,
                        settings.url_timeout)
    except UrlBlockedError as exc:
        raise ConfigurationError(f"callback URL refused: {exc} (ZSTAGGER_ALLOW_PRIVATE_URLS=1 allows it on a "
                                 "trusted network)") from None
    except (OSError, TimeoutError):
        pass  # not resolvable from here: the workers resolve and check it again for every delivery
    return url


class Job:
    """A handle on an enqueued job; cheap to create from a job id alone."""

    def __init__(self, job_id: str, settings: Settings | None = None, store: JobStore | None = None):
        self.id = check_job_id(job_id)  # raises InvalidJobIdError (an UnknownJobError) for anything else
        self.settings = settings or Settings()
        self._store = store

    @property
    def store(self) -> JobStore:
        if self._store is None:
            self._store = open_job_store(self.settings)
        return self._store

    def status(self) -> dict[str, Any]:
        """``{"job_id", "state": "pending|running|done", "total", "done", "failed", "pending"}``."""
        return _reachable(self.settings, lambda: self.store.status(self.id))

    def wait(
        self,
        timeout: float | None = None,
        poll: float = 0.25,
        on_unavailable: Callable[[QueueUnavailableError], None] | None = None,
    ) -> dict[str, Any]:
        """Block until the job is done; raises :class:`JobTimeout` after ``timeout`` seconds.

        A Redis outage is waited out until the deadline (``on_unavailable`` is told once
        per outage); Redis still down at the deadline raises :class:`QueueUnavailableError`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        outage = False
        while True:
            try:
                status = self.status()
            except QueueUnavailableError as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                if not outage and on_unavailable is not None:
                    on_unavailable(exc)
                outage = True
                time.sleep(1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic())))
                continue
            outage = False
            if status["state"] in FINAL_STATES:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeout(f"job {self.id} not done after {timeout:g}s: {status['pending']} of {status['total']} pending")
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))

    def result_lines(self) -> Iterator[str]:
        """JSON of each finished result, in input order (unfinished inputs are skipped)."""
        total = self.status()["total"]
        for _, line in self.store.iter_results(self.id, total):
            if line is not None:
                yield line

    def cancel(self) -> dict[str, Any]:
        """Cancel the job: chunks not yet started are skipped; chunks already running finish.

        Its status becomes ``cancelled`` (the results stored so far stay available) and its
        webhook or on-done task is sent with that state. A job that is already done (or
        cancelled) is left as it is. Returns the job's status.
        """
        status = self.status()
        if status["state"] in FINAL_STATES:
            return status

        def cancel() -> None:
            if self.store.claim(self.id, "cancelled"):
                job_finished(self.store, app_for(self.settings), self.id, "cancelled")

        check_transport()  # the notifications go through the broker: a missing package is said before anything changes
        _reachable(self.settings, cancel)
        return self.status()

    def result_page(self, offset: int, limit: int) -> list[str | None]:
        """Result JSON for inputs ``offset`` to ``offset + limit - 1`` (None where not finished yet)."""
        total = self.status()["total"]
        end = min(total, offset + limit)
        if offset >= end:
            return []
        return [line for _, line in self.store.iter_results(self.id, end, start=offset)]

    def results(self, wait: bool = False, timeout: float | None = None) -> list[TagResult | MultiTagResult]:
        """One :class:`~zstagger.TagResult` per finished input, in input order (a
        :class:`~zstagger.MultiTagResult` for a job of several taxonomies)."""
        if wait:
            self.wait(timeout)
        return [read_result(line) for line in self.result_lines()]

    def __repr__(self) -> str:
        return f"Job({self.id!r})"


def open_job_store(settings: Settings) -> JobStore:
    store = JobStore(connect(settings.redis_url, retries=2))
    _reachable(settings, store.redis.ping)
    return store


def _reachable(settings: Settings, call):
    try:
        return call()
    except redis.RedisError as exc:
        raise redis_failure(settings.redis_url, exc) from None
    except ImportError as exc:  # a package missing from this install is never an unreachable Redis
        raise missing_from(exc) from None


def check_transport() -> None:
    """Import the broker's transport (kombu's Redis transport and what it imports) now, so
    that a package missing from this install is reported as missing, before anything is written."""
    from importlib import import_module

    try:
        import_module(REDIS_TRANSPORT.split(":")[0])
    except ImportError as exc:
        raise missing_from(exc) from None


def enqueue(
    images: ImageInput | Iterable[ImageInput],
    taxonomy: str | Taxonomy | None = None,
    *,
    labels: Sequence[str] | None = None,
    template: str | None = None,
    top_k: int | None = None,
    chunk_size: int | None = None,
    queue: str = "bulk",
    callback_url: str | None = None,
    on_done: str | None = None,
    on_done_queue: str | None = None,
    results_url: str | None = None,
    sink: str | None = None,
    job_id: str | None = None,
    settings: Settings | None = None,
    taxonomies: Sequence[str | Taxonomy] | None = None,
    trusted: bool = True,
) -> Job:
    """Validate, split into chunks and enqueue images for the workers; returns the :class:`Job`.

    Everything is checked before anything is written: an unknown taxonomy, no images, a
    malformed reference or an oversized upload raise and leave Redis untouched. It is
    all or nothing: the job is marked as being enqueued until its last chunk is queued,
    and workers tag none of its chunks before that; if Redis fails part way (unreachable,
    or out of memory), the job is deleted again and the error says so; the chunks already
    queued are then dropped by the workers, which find no job for them.

    Directories are expanded here, on the producer, and paths are made absolute. Paths
    are read by the workers, so they must name files the workers can see at that path
    (shared storage); send bytes (``--upload``) or URLs otherwise.

    When the job finishes (done, or cancelled), ``callback_url`` receives a signed webhook
    event (``ZSTAGGER_WEBHOOK_SECRET``; see :mod:`zstagger.queue.signing`), and the Celery
    task named ``on_done`` is sent ``(job_id, status)`` on ``on_done_queue``, both at least
    once. ``results_url`` is put in the webhook event (the HTTP service sets it, with the
    ``job_id`` it chose).

    ``taxonomies=[...]`` (instead of ``taxonomy``): several taxonomies in one pass; each image
    is read and encoded once by a worker, and its result holds each taxonomy's under its name
    (:class:`~zstagger.results.MultiTagResult`). Inputs may bring text
    (:class:`~zstagger.images.ImageWithText`), checked here against ``ZSTAGGER_MAX_TEXT_CHARS``.
    A listable prefix (``s3://bucket/photos/``) is listed here a page at a time and becomes
    one chunk per page, each carrying only the page's bounds (:class:`.messages.ListingPage`):
    neither this process nor Redis ever holds the prefix's keys; the worker lists its page
    again. ``sink``: where each finished chunk's results are also written
    (:mod:`zstagger.sinks`: ``s3://bucket/results/``, a directory, an https webhook).
    ``trusted`` False (the HTTP service): object-store locations must be in the allow-lists.
    """
    settings = settings or Settings()
    if taxonomies is not None:
        if taxonomy is not None or labels is not None:
            raise ConfigurationError("give taxonomies=[...] alone, not with taxonomy or labels")
    specs = resolve_each(taxonomies) if taxonomies is not None else [resolve_taxonomy(taxonomy, labels, template)]
    chunk_size = chunk_size or settings.chunk_size
    if chunk_size < 1:
        raise ConfigurationError(f"chunk size must be at least 1, got {chunk_size}")
    if top_k is not None and top_k < 1:
        raise ConfigurationError(f"top_k must be at least 1, got {top_k}")
    if not _QUEUE_NAME.match(queue or ""):
        raise ConfigurationError(f"invalid queue name {queue!r}")
    notify: dict[str, str] = {}
    if callback_url is not None:
        notify["callback_url"] = check_callback_url(callback_url, settings)
    if on_done is not None:
        if not _TASK_NAME.match(on_done):
            raise ConfigurationError(f"invalid task name {on_done!r} for on_done (a dotted Celery task name)")
        notify["on_done_task"] = on_done
        if on_done_queue is not None:
            if not _QUEUE_NAME.match(on_done_queue):
                raise ConfigurationError(f"invalid queue name {on_done_queue!r} for on_done_queue")
            notify["on_done_queue"] = on_done_queue
    if results_url is not None:
        notify["results_url"] = results_url
    if sink is not None:
        if sink[:8].lower().startswith(("http://", "https://")):
            check_callback_url(sink, settings)  # a webhook sink: signed, and the address policy
        try:
            notify["sink"] = check_sink(sink, settings.sink_allow, trusted=trusted)
        except SourceRefusedError as exc:
            raise ConfigurationError(f"sink refused: {exc}") from None
    encoded: list[Any] = []
    prefixes: list[str] = []
    for ref in iter_inputs(images):
        if is_prefix(ref):
            prefixes.append(ref)  # type: ignore[arg-type]
        else:
            encoded.append(encode_item(len(encoded), ref, settings.max_upload_bytes, settings.max_text_chars))
    for item in encoded:
        if isinstance(item[1], str) and is_source_url(item[1]):
            _check_source(item[1], settings, trusted)
    pages = _listing_pages(prefixes, len(encoded), chunk_size, settings, trusted)
    total = len(encoded) + sum(page["count"] for page in pages)
    if not total:
        raise ConfigurationError("nothing to enqueue: no images in the inputs")
    packs = [read_packs(spec) for spec in specs]  # embedded image vectors: read (and checked to be there) before anything is written
    check_transport()

    store = open_job_store(settings)
    job_id = check_job_id(job_id) if job_id is not None else new_job_id()
    expires_at = int(time.time() + settings.result_ttl)
    chunks: list[Any] = [encoded[start : start + chunk_size] for start in range(0, len(encoded), chunk_size)]
    chunks += pages
    each_json = [_reachable(settings, lambda: spec_message(spec_for_workers(spec, pack, store.redis, expires_at),
                                                            store.redis, expires_at))
                 for spec, pack in zip(specs, packs)]
    spec_json = each_json if taxonomies is not None else each_json[0]  # one spec travels as it always has
    # Marked as being enqueued until every chunk is out: no worker tags a chunk of it before
    # then, so a failure part way (the job is deleted) leaves nothing of it tagged.
    _reachable(settings, lambda: store.create(
        job_id, total, expires_at, chunks=len(chunks), queue=queue, taxonomy=",".join(s.name for s in specs),
        fingerprint=",".join(s.fingerprint for s in specs), **{ENQUEUING: time.time()}, **notify,
    ))
    app = app_for(settings)
    try:
        with app.producer_or_acquire() as producer:
            beat = time.monotonic()
            for items in chunks:
                listing = items if isinstance(items, dict) else None
                app.send_task(
                    TASK_NAME,
                    args=(job_id, [] if listing else items, spec_json),
                    kwargs={"top_k": top_k, "expires_at": expires_at, **({"listing": listing} if listing else {})},
                    queue=queue,
                    producer=producer,
                )
                if time.monotonic() - beat > ENQUEUE_BEAT:  # still here: workers keep waiting
                    store.enqueuing(job_id)
                    beat = time.monotonic()
        store.enqueued(job_id)
    except ImportError as exc:  # a package missing from this install, met part way: roll back, say which
        with contextlib.suppress(redis.RedisError):
            store.delete(job_id)
        raise missing_from(exc) from None
    except Exception as exc:  # redis-py's errors, or kombu's wrappers of them
        cause = exc.__cause__ if exc.__cause__ is not None and not isinstance(exc, redis.RedisError) else exc
        try:
            store.delete(job_id)
            outcome = f"while enqueueing job {job_id}; the job was rolled back (nothing of it will be tagged)"
        except redis.RedisError:
            outcome = f"while enqueueing job {job_id}, and it could not be rolled back (it will never finish)"
        raise redis_failure(settings.redis_url, cause, outcome) from exc
    return Job(job_id, settings, store)


def _check_source(ref: str, settings: Settings, trusted: bool) -> None:
    try:
        check_reference(ref, settings.source_allow, trusted=trusted)
    except SourceRefusedError as exc:
        raise ConfigurationError(f"cannot enqueue: {exc}") from None


def _listing_pages(prefixes: list[str], first: int, page_size: int, settings: Settings,
                   trusted: bool) -> list[dict[str, Any]]:
    """Each prefix listed a page at a time into the bounds of its pages (what each chunk
    carries), numbered from input ``first``. Holds one page of keys at a time."""
    from ..images import ImagePolicy

    policy = ImagePolicy.from_settings(settings)
    pages: list[dict[str, Any]] = []
    for prefix in prefixes:
        _check_source(prefix, settings, trusted)
        after: str | None = None
        try:
            for page in list_prefix(prefix, policy, page_size=page_size, trusted=trusted):
                pages.append({"prefix": prefix, "first": first, "count": len(page), "after": after,
                              "last": page[-1].url})
                first += len(page)
                after = page[-1].url
        except ImageLoadError as exc:
            raise ConfigurationError(f"cannot list a prefix: {exc}") from None
    return pages


def load_refs_for_upload(refs: Iterable[ImageInput], max_bytes: int) -> Iterator[ImageInput]:
    """Replace local file paths by their bytes (``zstagger enqueue --upload``); an input's text stays with it."""
    from ..images import ImageWithText, is_url

    for ref in refs:
        if isinstance(ref, ImageWithText):
            yield ImageWithText(next(load_refs_for_upload([ref.image], max_bytes)), ref.text)
        elif isinstance(ref, str) and not is_url(ref):
            try:
                data = read_regular_file(ref, max_bytes, "ZSTAGGER_MAX_UPLOAD_BYTES")
            except FileReadError as exc:
                raise ConfigurationError(f"cannot upload: {exc}") from None
            yield NamedBytes(ref, data)
        else:
            yield ref
