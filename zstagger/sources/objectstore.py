"""The built-in object-store sources: ``s3://``, ``gs://`` (``gcs://``) and ``az://`` (``abfs://``), through fsspec.

Each cloud is an extra (``zstagger[s3]``: s3fs, ``[gcs]``: gcsfs, ``[azure]``: adlfs).
Credentials are the process's own: the cloud's environment variables, config files or
instance role, and ``ZSTAGGER_SOURCE_OPTIONS`` for filesystem options such as an endpoint;
never anything from a reference (:mod:`.access` refuses credentials in URLs).

Bounded as the HTTP client is: every call to the store runs with the time that is left
(``fsspec.asyn.sync(..., timeout=)``, and the client's own connect and read timeouts); an
object's size is read first (one HEAD) and one over the cap is refused before its body is
asked for; the body is asked for with a range that ends one byte past the cap. A key that is
a "directory" (a prefix, or a zero-byte ``name/`` marker) is a ``not_a_file`` error.

Listing (``s3://bucket/prefix/``) is paged with the store's own continuation tokens and
``StartAfter``, so a listing of a million keys holds one page at a time. Only S3 lists here;
``gs://`` and ``az://`` objects are read by URL.
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
            try:
                _filesystems[key] = fsspec.filesystem(protocol, skip_instance_cache=True, **options)
            except ImportError as exc:
                raise missing_from(exc) from None
        return _filesystems[key]


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
        from fsspec.asyn import sync

        fs = filesystem(self.protocol, request.timeout)
        return sync(fs.loop, getattr(fs, method), *args, timeout=request.left(), **kwargs)

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
        # One byte past the cap: an object that grew since its size was read is still refused.
        return self._call(request, "_cat_file", url, start=0, end=request.max_bytes + 1)

    def version(self, url: str, request: ReadRequest) -> str | None:
        info = self._info(url, request)
        tag = info.get("ETag") or info.get("generation") or info.get("etag")  # as a listing gives it
        return f"{tag}:{info.get('size')}" if tag else None


class S3Source(ObjectStoreSource):
    """``s3://``: also lists a prefix, a page at a time (ListObjectsV2)."""

    def __init__(self) -> None:
        super().__init__("s3", ("s3", "s3a"))

    def list(self, prefix: str, page_size: int, start_after: str | None = None) -> Iterator[list[ObjectInfo]]:
        scheme = prefix.split("://", 1)[0].lower()
        bucket_and_key = prefix.split("://", 1)[1]
        bucket, _, key = bucket_and_key.partition("/")
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key, "MaxKeys": page_size}
        if start_after:
            kwargs["StartAfter"] = start_after.split("://", 1)[1].partition("/")[2]
        settings = Settings()
        request_timeout = settings.url_timeout
        while True:
            request = ReadRequest(0, time.monotonic() + request_timeout, request_timeout)
            answer = self._call(request, "_call_s3", "list_objects_v2", **kwargs)
            yield [ObjectInfo(f"{scheme}://{bucket}/{item['Key']}", item.get("Size"),
                              f"{item.get('ETag')}:{item.get('Size')}")
                   for item in answer.get("Contents", []) if not item["Key"].endswith("/")]
            if not answer.get("IsTruncated") or not answer.get("NextContinuationToken"):
                return
            kwargs["ContinuationToken"] = answer["NextContinuationToken"]


@hookimpl
def register_image_sources(register) -> None:
    register(S3Source())
    register(ObjectStoreSource("gcs", ("gs", "gcs")))
    register(ObjectStoreSource("abfs", ("az", "abfs", "abfss")))
