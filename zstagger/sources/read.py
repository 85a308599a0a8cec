"""Reading through the sources: the one owner of their size cap, time budget and error records.

:func:`read_bytes` is what every reader of images calls (the embedder, media detection, the
review page, runtime calibration): bytes and pictures go to :mod:`zstagger.images` as they
are; a string reference goes to the source of its scheme. Every source is held to the same
rules as the hardened HTTP client: at most ``ZSTAGGER_MAX_IMAGE_BYTES`` (an object that says
it is larger is refused before a byte of it is read), done within ``ZSTAGGER_URL_TIMEOUT``,
and every failure an :class:`~zstagger.errors.ImageLoadError` with a stable kind.

A source that says it is ``bounded`` (the built-ins: their clients take the deadline and
the cap) is called directly; any other is called on a thread of its own, and waited for
until the deadline only: a source that hangs costs its caller the time budget, never more.
Reads a source has left hanging are counted; past :data:`MAX_HANGING` of them, the source is
refused at once until some return, so a hung backend cannot pile up threads without end.
"""

from __future__ import annotations

import inspect
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ..errors import ImageLoadError, SourceRefusedError, ZstaggerError
from ..images.load import read_image_bytes
from ..images.inputs import ImageInput
from ..images.policy import DEFAULT_POLICY, ImagePolicy
from .access import OWN_RULES, check_reference, scheme_of
from .base import ObjectInfo, ObjectRef, ReadRequest
from .registry import is_listable, source_for

T = TypeVar("T")

#: Reads of one scheme left running past their deadline, before that scheme is refused outright.
MAX_HANGING = 16
_CHUNK = 1 << 20
_hanging: dict[str, int] = {}
_hanging_lock = threading.Lock()


def request_for(policy: ImagePolicy, ref: object = None) -> ReadRequest:
    """A read's cap and deadline from the image policy (starting now), and the size a listing gave ``ref``."""
    return ReadRequest(max_bytes=policy.max_bytes, deadline=time.monotonic() + policy.url_timeout,
                       timeout=policy.url_timeout, policy=policy, size=getattr(ref, "size", None))


def read_bytes(ref: ImageInput, policy: ImagePolicy = DEFAULT_POLICY, *, trusted: bool = True) -> bytes:
    """The encoded bytes of one reference, within the cap and the time budget, or an ImageLoadError."""
    if not isinstance(ref, (str, os.PathLike)):
        return read_image_bytes(ref, policy)  # bytes, named bytes, pictures: nothing to open
    url = os.fspath(ref)
    scheme = scheme_of(url)
    source = _source(url, scheme, policy, trusted)
    request = request_for(policy, ref)
    return _bounded(source, scheme, url, request, lambda: _capped(source.open(url, request), url, request))


def object_version(url: str, policy: ImagePolicy = DEFAULT_POLICY) -> str | None:
    """What identifies the current version of an object (ETag or generation, with its size),
    from its source's ``version``; None when the source has none or cannot say (the object is
    then read, and any problem reported by the read)."""
    scheme = scheme_of(url)
    if scheme in OWN_RULES:
        return None
    if getattr(url, "version", None):  # as the listing gave it: no request
        return url.version  # type: ignore[attr-defined]
    try:
        source = _source(url, scheme, policy, True)
        version = getattr(source, "version", None)
        if version is None:
            return None
        request = request_for(policy)
        return _bounded(source, scheme, url, request, lambda: version(url, request))
    except ZstaggerError:
        return None


def list_prefix(prefix: str, policy: ImagePolicy = DEFAULT_POLICY, *, page_size: int = 256,
                start_after: str | None = None, trusted: bool = True) -> Iterator[list[ObjectInfo]]:
    """The objects under ``prefix``, a page at a time, as the source lists them (lazily: one
    page in memory). Each page is fetched within the time budget; a listing that fails stops
    with a :class:`SourceRefusedError` or :class:`ImageLoadError` saying why."""
    scheme = scheme_of(prefix)
    source = _source(prefix, scheme, policy, trusted)
    if not is_listable(scheme):
        raise SourceRefusedError(f"the {scheme}:// source cannot list a prefix; give the objects' URLs one by one")
    listing = source.list  # type: ignore[attr-defined]
    # The built-in object stores take the policy's time budget per call; a plugin's list may not.
    extra = {"timeout": policy.url_timeout} if "timeout" in inspect.signature(listing).parameters else {}
    pages = iter(listing(prefix, page_size, start_after, **extra))
    while True:
        request = request_for(policy)
        page = _bounded(source, scheme, prefix, request, lambda: next(pages, None))
        if page is None:
            return
        if page:
            yield page


def listing_order(prefix: str) -> Callable[[str], Any]:
    """A key for comparing two object URLs under ``prefix`` the way its source lists them
    (a source's ``order_key``; Python's string order for sources without one)."""
    source = source_for(scheme_of(prefix))
    return getattr(source, "order_key", None) or str


def is_prefix(ref: object) -> bool:
    """A reference that names a listing rather than one object: an ``s3://bucket/prefix/`` URL
    (ending with ``/``) whose source can list."""
    if not isinstance(ref, str) or not ref.endswith("/"):
        return False
    scheme = scheme_of(ref)
    try:
        return scheme not in OWN_RULES and is_listable(scheme)
    except ZstaggerError:
        return False


def _source(url: str, scheme: str, policy: ImagePolicy, trusted: bool) -> Any:
    try:
        check_reference(url, policy.source_allow, trusted=trusted)
        return source_for(scheme)
    except SourceRefusedError as exc:
        raise ImageLoadError("source_refused", str(exc)) from None


def _capped(opened: Any, url: str, request: ReadRequest) -> bytes:
    """At most ``request.max_bytes`` of what a source opened (bytes or a binary file object)."""
    limit = request.max_bytes
    if isinstance(opened, (bytes, bytearray, memoryview)):
        if len(opened) > limit:
            raise _too_large(url, limit, len(opened))
        return bytes(opened)
    try:
        size = getattr(opened, "size", None)
        if isinstance(size, int) and size > limit:
            raise _too_large(url, limit, size)  # refused before a byte of it is read
        chunks, total = [], 0
        while True:
            if time.monotonic() > request.deadline:
                raise _timeout(url, request)
            chunk = opened.read(min(_CHUNK, limit + 1 - total))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise _too_large(url, limit)
    finally:
        close = getattr(opened, "close", None)
        if close is not None:
            close()


def _bounded(source: Any, scheme: str, url: str, request: ReadRequest, call: Callable[[], T]) -> T:
    """``call()`` within the deadline, its failures as ImageLoadErrors (see the module docstring)."""
    if getattr(source, "bounded", False):
        return _as_image_error(call, url, request)
    with _hanging_lock:
        if _hanging.get(scheme, 0) >= MAX_HANGING:
            raise ImageLoadError("source_failed", f"not read: {_hanging[scheme]} earlier reads from the {scheme}:// "
                                 "source are still hanging past their deadline", transient=True)
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = _as_image_error(call, url, request)
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc
        finally:
            done.set()
            with _hanging_lock:
                if box.get("abandoned"):
                    _hanging[scheme] -= 1

    threading.Thread(target=run, name=f"zstagger-source-{scheme}", daemon=True).start()
    if not done.wait(max(0.0, request.deadline - time.monotonic())):
        with _hanging_lock:
            if not done.is_set():
                box["abandoned"] = True
                _hanging[scheme] = _hanging.get(scheme, 0) + 1
                raise _timeout(url, request)
    if "error" in box:
        raise box["error"]
    return box["value"]


def _as_image_error(call: Callable[[], T], url: str, request: ReadRequest) -> T:
    try:
        return call()
    except ImageLoadError:
        raise
    except SourceRefusedError as exc:
        raise ImageLoadError("source_refused", str(exc)) from None
    except ZstaggerError as exc:
        raise ImageLoadError(getattr(exc, "kind", None) or "source_failed", str(exc),
                             transient=bool(getattr(exc, "transient", False))) from None
    except FileNotFoundError:
        raise ImageLoadError("not_found", f"no such object: {url}") from None
    except IsADirectoryError:
        raise ImageLoadError("not_a_file", f"{url} is a directory (a prefix), not an object") from None
    except PermissionError as exc:
        raise ImageLoadError("unreadable", f"access denied reading {url}: {_short(exc)}") from None
    except TimeoutError:
        raise _timeout(url, request) from None
    except OSError as exc:
        raise ImageLoadError("source_failed", f"could not read {url}: {_short(exc)}", transient=True) from None
    except Exception as exc:
        if type(exc).__name__ in ("FSTimeoutError", "ConnectTimeoutError", "ReadTimeoutError"):
            raise _timeout(url, request) from None
        raise ImageLoadError("source_failed", f"could not read {url}: {type(exc).__name__}: {_short(exc)}") from None


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _timeout(url: str, request: ReadRequest) -> ImageLoadError:
    return ImageLoadError("fetch_timeout", f"timed out after {request.timeout:g}s reading {url} (ZSTAGGER_URL_TIMEOUT)",
                          transient=True)


def _too_large(url: str, limit: int, size: int | None = None) -> ImageLoadError:
    said = f"is {size:,} bytes" if size is not None else "is larger than that"
    return ImageLoadError("too_large", f"{url} {said}, over the {limit:,}-byte limit (ZSTAGGER_MAX_IMAGE_BYTES)")


def expand_prefixes(refs: Iterator[ImageInput] | list[ImageInput], policy: ImagePolicy = DEFAULT_POLICY, *,
                    page_size: int = 256, trusted: bool = True) -> Iterator[ImageInput]:
    """``refs`` with each listable prefix (``s3://bucket/photos/``) replaced by the URLs of the
    objects under it, listed a page at a time as they are consumed (constant memory whatever
    the prefix holds). Everything else passes through unchanged. A prefix that cannot be
    listed (refused, unreachable) stops the stream with its error: it is the caller's input."""
    for ref in refs:
        if is_prefix(ref):
            for page in list_prefix(ref, policy, page_size=page_size, trusted=trusted):  # type: ignore[arg-type]
                for item in page:
                    yield ObjectRef.of(item)
        else:
            yield ref
