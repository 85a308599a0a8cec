"""The built-in object-store sources: ``s3://``, ``gs://`` (``gcs://``) and ``az://`` (``abfs://``), through fsspec.

Each cloud is an extra (``zstagger[s3]``: s3fs, ``[gcs]``: gcsfs, ``[azure]``: adlfs).
Credentials are the process's own: the cloud's environment variables, config files or
instance role, and ``ZSTAGGER_SOURCE_OPTIONS`` for filesystem options such as an endpoint;
never anything from a reference (:mod:`.access` refuses credentials in URLs).

Bounded as the HTTP client is: every call to the store runs with the time that is left
(``fsspec.asyn.sync(..., timeout=)``, and the client's own connect and read timeouts); an
object's size is read first (one HEAD) and one over the cap is refused before its body is
asked for; the body is asked for with a range that ends one byte past the cap. A key that is
a "directory" (a prefix, or a zero-byte ``name/`` marker) is a ``not_a_file`` error. An
``s3://`` body comes through :mod:`.s3get` (a presigned GET on a pooled connection) where the
configuration allows.

Listing (``s3://bucket/prefix/``, ``gs://...``, ``az://container/prefix/``) is paged with the
store's own continuation tokens, so a listing of a million keys holds one page at a time; a
listing that resumes after a key asks the store to start there (S3 ``StartAfter``, GCS
``startOffset``, Azure ``startFrom``) and also drops any key at or before it itself, so a store
that ignores the hint is slower, never wrong.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..errors import ConfigurationError, ImageLoadError
from ..extras import missing_from
from ..hookspecs import hookimpl
from ..settings import Settings
from . import s3get
from .base import ObjectInfo, ReadRequest

_filesystems: dict[tuple[str, float, str], Any] = {}
_lock = threading.Lock()


_options_text: dict[tuple[str, ...], str] = {}


def _source_options_text() -> str:
    """ZSTAGGER_SOURCE_OPTIONS as the settings read it, once per value of the variable: every
    read of an object asks, and reading the whole settings costs more than a small object's GET."""
    raw = tuple(value for name, value in os.environ.items() if name.upper() == "ZSTAGGER_SOURCE_OPTIONS")  # (any case)
    if raw not in _options_text:
        _options_text[raw] = Settings().source_options.get_secret_value()
    return _options_text[raw]


def source_options(protocol: str) -> dict[str, Any]:
    """ZSTAGGER_SOURCE_OPTIONS for one filesystem (a JSON object keyed by scheme)."""
    text = _source_options_text().strip()
    if not text:
        return {}
    try:
        options = json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"ZSTAGGER_SOURCE_OPTIONS is not JSON: {exc}") from None
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise ConfigurationError('ZSTAGGER_SOURCE_OPTIONS must be a JSON object of objects, e.g. {"s3": {"endpoint_url": "..."}}')
    return dict(options.get(protocol, {}))


def filesystem(protocol: str, timeout: float) -> Any:
    """The process's fsspec filesystem for ``protocol`` (one per timeout; a forked worker makes its own)."""
    key = (protocol, timeout, _source_options_text())
    with _lock:
        if key not in _filesystems:
            try:
                import fsspec
            except ImportError as exc:
                raise missing_from(exc) from None
            options = source_options(protocol)
            if protocol == "s3":
                config = options.setdefault("config_kwargs", {})
                config.setdefault("connect_timeout", timeout)
                config.setdefault("read_timeout", timeout)
                config.setdefault("retries", {"max_attempts": 2, "mode": "standard"})
                config.setdefault("signature_version", "s3v4")  # (presigned GETs too: botocore presigns with SigV2 otherwise)
            try:
                _filesystems[key] = _filesystem_class(protocol, options)(skip_instance_cache=True, **options)
            except ImportError as exc:
                raise missing_from(exc) from None
        return _filesystems[key]


def _filesystem_class(protocol: str, options: dict[str, Any]) -> Any:
    """fsspec's class for ``protocol``; for Google Cloud Storage at an endpoint of the user's own
    (an emulator, a gateway: ``endpoint_url`` or ``STORAGE_EMULATOR_HOST``) gcsfs's JSON-API
    filesystem, not its default one that first asks Google's gRPC control plane what kind of
    bucket it is (at such an endpoint that question waits a minute per bucket, then gives up)."""
    import fsspec

    if protocol in ("gcs", "gs") and (options.get("endpoint_url") or os.environ.get("STORAGE_EMULATOR_HOST")):
        from gcsfs.core import GCSFileSystem

        return GCSFileSystem
    return fsspec.get_filesystem_class(protocol)


def _forget_after_fork() -> None:  # a forked worker must not share its parent's event loop and sockets
    global _lock
    _filesystems.clear()
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


class ObjectStoreSource:
    """One object store through fsspec: read an object, say its version."""

    bounded = True  # every call below takes the deadline; the body's range ends at the cap

    def __init__(self, protocol: str, schemes: tuple[str, ...]):
        self.protocol, self.schemes = protocol, schemes

    def _call(self, request: ReadRequest, method: str, *args: Any, **kwargs: Any) -> Any:
        """The filesystem's coroutine ``method``, run on its loop within the request's time."""
        return self._run(request, lambda fs: getattr(fs, method)(*args, **kwargs))

    def _run(self, request: ReadRequest, coroutine_for: Any) -> Any:
        from fsspec.asyn import sync

        fs = filesystem(self.protocol, request.timeout)
        try:
            return sync(fs.loop, lambda: coroutine_for(fs), timeout=request.left())
        except Exception as exc:
            status = _status_of(exc)
            if status is None:
                raise
            raise _status_error(status, exc) from None

    def _info(self, url: str, request: ReadRequest) -> dict[str, Any]:
        info = self._call(request, "_info", url)
        if info.get("type") == "directory" or url.endswith("/"):
            raise ImageLoadError("not_a_file", f"{url} is a directory (a prefix), not an object; "
                                 "end the URL with / to tag every object under it")
        return info

    def open(self, url: str, request: ReadRequest) -> bytes:
        # The size a listing gave is as good as a HEAD's (both read before the body): one request, not two.
        size = request.size if request.size is not None else self._info(url, request).get("size")
        if isinstance(size, int) and size > request.max_bytes:
            raise ImageLoadError("too_large", f"{url} is {size:,} bytes, over the {request.max_bytes:,}-byte limit "
                                 "(ZSTAGGER_MAX_IMAGE_BYTES)")
        if size == 0:
            return b""
        return self._body(url, request)

    def _body(self, url: str, request: ReadRequest) -> bytes:
        # One byte past the cap: an object that grew since its size was read is still refused.
        return self._call(request, "_cat_file", url, start=0, end=request.max_bytes + 1)

    def version(self, url: str, request: ReadRequest) -> str | None:
        info = self._info(url, request)
        return self._version(info.get("ETag") or info.get("generation") or info.get("etag"), info.get("size"))

    @staticmethod
    def _version(tag: Any, size: Any) -> str | None:
        """An object's version as a listing and a HEAD both give it."""
        return f"{tag}:{size}" if tag else None

    def order_key(self, url: str) -> Any:
        """Where ``url`` comes in this store's listings (compared with another object's of the same bucket)."""
        return self._name_order()(url.partition("://")[2].partition("/")[2])

    def _name_order(self) -> Any:
        """Key names by the store's listing order: S3 and GCS list in UTF-8 byte order, which
        is the order of Python's strings."""
        return str

    def list(self, prefix: str, page_size: int, start_after: str | None = None,
             timeout: float | None = None) -> Iterator[list[ObjectInfo]]:
        """The objects under ``prefix`` (``scheme://bucket/key-prefix``), one store page at a time,
        "directory" markers left out; after ``start_after`` (an object URL) when given. Each call
        to the store has ``timeout`` seconds (default ZSTAGGER_URL_TIMEOUT); a store that pages
        without end (a token again, the same page again, empty pages for longer than that) is a
        ``source_failed`` error."""
        scheme, _, rest = prefix.partition("://")
        bucket, _, key = rest.partition("/")
        after = start_after.partition("://")[2].partition("/")[2] if start_after else None
        floor: Any = None
        order: Any = None
        timeout = Settings().url_timeout if timeout is None else timeout
        token: str | None = None
        tokens: set[str] = set()
        first_names: tuple[str | None, str | None] = (None, None)
        empty_since: float | None = None
        while True:
            request = ReadRequest(0, time.monotonic() + timeout, timeout)
            found, token = self._run(request, lambda fs: self._page(fs, bucket, key, page_size, after, token))
            if start_after and floor is None:
                order = self._name_order()  # (after the first page: Azure learns its account's kind there)
                floor = order(after)
            if token is not None:
                if token in tokens:
                    raise _endless(prefix, "gave a continuation token it had given before")
                tokens.add(token)
                if len(tokens) > 100_000:
                    tokens.clear()  # (memory bounded; a loop that long is caught by its repeated pages)
            if found:
                if found[0][0] in first_names:
                    raise _endless(prefix, "answered with the same page again")
                first_names, empty_since = (first_names[1], found[0][0]), None
            elif token is not None:  # empty pages with a token are legal (Azure); forever, not
                empty_since = empty_since or time.monotonic()
                if time.monotonic() - empty_since > timeout:
                    raise _endless(prefix, f"gave only empty pages for {timeout:g}s")
            objects = [ObjectInfo(f"{scheme}://{bucket}/{name}", size, self._version(tag, size))
                       for name, size, tag in found
                       if not name.endswith("/") and (floor is None or order(name) > floor)]
            # A store that answers with more than a page (an emulator ignoring the page size) is
            # handed on a page at a time all the same.
            for start in range(0, max(1, len(objects)), page_size):
                yield objects[start:start + page_size]
            if not token:
                return

    async def _page(self, fs: Any, bucket: str, key: str, size: int, after: str | None,
                    token: str | None) -> tuple[list[tuple[str, int | None, Any]], str | None]:
        """One page of the store's listing: ``(name, size, ETag or generation)`` of each object,
        and the token for the next page (None after the last)."""
        raise NotImplementedError


def _endless(prefix: str, what: str) -> ImageLoadError:
    return ImageLoadError("source_failed", f"listing {prefix} stopped: the store {what}")


def _status_of(exc: BaseException) -> int | None:
    """The HTTP status a store's client error carries (gcsfs's HttpError ``code``, Azure's
    ``status_code``, gcsfs's bare "Forbidden" OSError); None for anything else."""
    for name in ("status_code", "code"):
        value = getattr(exc, name, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    if type(exc) is OSError and str(exc).startswith("Forbidden"):
        return 403
    return None


def _status_error(status: int, exc: BaseException) -> Exception:
    """A store's HTTP error as zstagger reads it: refused for good (401/403: the process's
    credentials), gone (404), or worth another try later (408, 429, 5xx)."""
    said = " ".join(str(exc).split())[:300] or type(exc).__name__
    if status in (401, 403):
        return ImageLoadError("unreadable", f"access denied ({status}): {said}")
    if status == 404:
        return FileNotFoundError(said)
    if status in (408, 429) or status >= 500:
        return ImageLoadError("source_failed", f"the store answered {status}: {said}", transient=True)
    return ImageLoadError("source_failed", f"the store answered {status}: {said}")


def _size(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class S3Source(ObjectStoreSource):
    """``s3://``: lists with ListObjectsV2."""

    def __init__(self) -> None:
        super().__init__("s3", ("s3", "s3a"))

    def _body(self, url: str, request: ReadRequest) -> bytes:
        """Through a presigned URL and a pooled GET where the configuration allows (:mod:`.s3get`:
        about 0.6 of s3fs's CPU per object), else through s3fs."""
        fs = filesystem("s3", request.timeout)
        if s3get.plain(source_options("s3")) and not s3get.resting(fs):
            try:
                presigned = self._run(request, lambda fs: s3get.presign(fs, url, request.deadline))
            except (ImageLoadError, TimeoutError):
                raise
            except Exception:  # noqa: BLE001  (a name only s3fs's own calls take: s3fs reads it, or says why not)
                presigned = None
            if presigned is not None:
                try:
                    body = s3get.get(fs, presigned, request.max_bytes, request.deadline)
                except s3get.StoreAnswered as exc:
                    raise _status_error(exc.status_code, exc) from None
                s3get.answered(fs, body is not None)
                if body is not None:
                    return body
        return super()._body(url, request)

    async def _page(self, fs, bucket, key, size, after, token):
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key, "MaxKeys": size}
        if token:
            kwargs["ContinuationToken"] = token
        elif after:
            kwargs["StartAfter"] = after
        answer = await fs._call_s3("list_objects_v2", **kwargs)
        found = [(item["Key"], _size(item.get("Size")), item.get("ETag")) for item in answer.get("Contents", [])]
        return found, (answer.get("NextContinuationToken") if answer.get("IsTruncated") else None)


class GCSSource(ObjectStoreSource):
    """``gs://``: lists with the JSON API's objects.list; the generation is the version."""

    def __init__(self) -> None:
        super().__init__("gcs", ("gs", "gcs"))

    async def _page(self, fs, bucket, key, size, after, token):
        answer = await fs._call("GET", "b/{}/o", bucket, prefix=key or None, maxResults=size, pageToken=token,
                                startOffset=None if token else after, json_out=True)
        found = [(item["name"], _size(item.get("size")), item.get("generation")) for item in answer.get("items", [])]
        return found, answer.get("nextPageToken") or None


class AzureSource(ObjectStoreSource):
    """``az://container/`` (``abfs://``): lists with List Blobs through adlfs's client.

    Blob Storage lists names in UTF-16 order (``a😀`` before ``a！``, unlike Python's strings),
    and an account with a hierarchical namespace (Data Lake Gen2) path segment by segment
    (``a``, ``a/b``, ``a-c``); :meth:`order_key` follows the account's kind, asked once."""

    def __init__(self) -> None:
        super().__init__("abfs", ("az", "abfs", "abfss"))
        self._hierarchical: dict[str, bool] = {}  # by ZSTAGGER_SOURCE_OPTIONS: one account per configuration

    @staticmethod
    def _version(tag: Any, size: Any) -> str | None:
        return f"{str(tag).strip(chr(34))}:{size}" if tag else None  # quoted in a HEAD, not in a listing

    def _name_order(self) -> Any:
        if self._hierarchical.get(_source_options_text(), False):
            return lambda name: tuple(part.encode("utf-16-be") for part in name.split("/"))
        return lambda name: name.encode("utf-16-be")

    async def _page(self, fs, bucket, key, size, after, token):
        account = _source_options_text()
        if account not in self._hierarchical:
            try:
                info = await fs.service_client.get_account_information()
                self._hierarchical[account] = bool(info.get("is_hns_enabled"))
            except Exception:  # (an emulator, or credentials without that right: a flat namespace is the default)
                self._hierarchical[account] = False
        container = fs.service_client.get_container_client(bucket)
        options: dict[str, Any] = {"name_starts_with": key or None, "results_per_page": size}
        if after and not token:
            options["start_from"] = after
        pages = container.list_blobs(**options).by_page(continuation_token=token)
        try:
            page = await pages.__anext__()
        except StopAsyncIteration:
            return [], None
        found = [(blob.name, blob.size, blob.etag) async for blob in page]
        return found, pages.continuation_token or None


@hookimpl
def register_image_sources(register) -> None:
    register(S3Source())
    register(GCSSource())
    register(AzureSource())
