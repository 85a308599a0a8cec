"""An S3 object's body without the SDK's cost per request: a presigned URL and a pooled GET.

Reading a 700 KB object through s3fs costs the worker about 2.7 ms of CPU (botocore's
request pipeline: endpoint rules, signing, event hooks, response parsing, a hop to fsspec's
event-loop thread), this path about 1.7 ms. Here s3fs's own client presigns the GET (the
same endpoint, addressing style, region and credentials, refreshed as the SDK refreshes
them) and the body comes over a keep-alive connection from a process-wide urllib3 pool,
read in the calling thread.

Taken only for a plain configuration: anything this path would not honour as s3fs does
(a proxy, requester-pays, extra request arguments, any s3fs option beyond endpoint,
credentials, region, TLS verification and timeouts) leaves the read to s3fs, as does any
answer but the object's bytes, a 404 ("no such object" here too) or a 408/429/5xx (a
transient error at once): s3fs then asks again and reports, retries or follows as it always
has. The deadline holds as on every read: the name lookup and each connect within the time
left, and the socket under :mod:`zstagger.net.deadline`'s watch from the request on.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from ..net import deadline as deadlines
from ..net.addresses import resolve_allowed

#: s3fs options this path honours; any other leaves reads to s3fs.
_PLAIN_OPTIONS = {"endpoint_url", "key", "secret", "token", "client_kwargs", "config_kwargs"}
_PLAIN_CLIENT = {"endpoint_url", "region_name", "verify"}
_PLAIN_CONFIG = {"connect_timeout", "read_timeout", "retries", "signature_version", "s3"}
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")

#: Presigned GETs handed to s3fs in a row before reads skip this path, and for how long.
RESTING_AFTER = 8
REST_SECONDS = 300

log = logging.getLogger(__name__)
_pools: dict[Any, Any] = {}
_misses: dict[int, tuple[int, float]] = {}  # by filesystem: GETs handed to s3fs in a row, resting until
_lock = threading.Lock()
_current = threading.local()  # the deadline of the GET this thread is making, and the watch on its socket


def plain(options: dict[str, Any]) -> bool:
    """Whether reads with these s3fs options (ZSTAGGER_SOURCE_OPTIONS' ``s3``) may take this path."""
    if set(options) - _PLAIN_OPTIONS:
        return False
    if set(options.get("client_kwargs") or {}) - _PLAIN_CLIENT:
        return False
    config = options.get("config_kwargs") or {}
    if set(config) - _PLAIN_CONFIG or set(config.get("s3") or {}) - {"addressing_style"}:
        return False
    return not any(name.lower() in _PROXY_VARIABLES and value for name, value in os.environ.items())


async def presign(fs: Any, url: str, deadline: float) -> str | None:
    """A presigned GET for ``url`` from s3fs's own client (its bucket and key split as s3fs
    splits them, access-point ARNs included), or None for a key this path would not send as
    signed (``.``/``..`` segments: an HTTP client folds them)."""
    bucket, key, version = fs.split_path(url)
    if version or any(part in (".", "..") for part in key.split("/")):
        return None
    await fs.set_session()
    expires = max(900, int(deadline - time.monotonic()) + 60)  # (a worker's clock a little behind S3's)
    return await fs.s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires)


class StoreAnswered(Exception):
    """The store refused for now (408, 429, 5xx): ``status_code``, as the object-store errors carry it."""

    def __init__(self, status: int, reason: str):
        super().__init__(f"{status} {reason}")
        self.status_code = status


def get(fs: Any, url: str, last_byte: int, deadline: float) -> bytes | None:
    """Bytes ``0..last_byte`` of the object a presigned ``url`` names (one byte more when it is
    longer and the store ignored the range), or None when s3fs should read it instead;
    FileNotFoundError for a 404, :class:`StoreAnswered` for a refusal for now, TimeoutError
    past ``deadline``, OSError for a cut-off body."""
    import urllib3

    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    _current.deadline, _current.watch, _current.fired, _current.why = deadline, None, False, ""
    response = None
    try:
        response = _pool(fs).request("GET", url, headers={"Range": f"bytes=0-{last_byte}"}, preload_content=False,
                                     retries=False, redirect=False, timeout=urllib3.Timeout(connect=left, read=left))
        if response.status == 404:
            raise FileNotFoundError(url.partition("?")[0])
        if response.status in (408, 429) or response.status >= 500:
            raise StoreAnswered(response.status, response.reason or "")
        if response.status not in (200, 206):
            _current.why = f"HTTP {response.status} {response.reason or ''}".strip()
            return None  # (403: expired, another region, ...: s3fs follows and reports)
        expected = response.length_remaining
        body = response.read(last_byte + 2, decode_content=False)
        if expected is not None and len(body) < min(expected, last_byte + 2):
            raise OSError(f"the store closed the connection after {len(body):,} of {expected:,} bytes")
        if len(body) <= last_byte + 1 and not _stop_watch():  # (the watch stopped before the socket is pooled again)
            response.release_conn()
            response = None
        return body
    except urllib3.exceptions.NewConnectionError as exc:
        if _stop_watch() or time.monotonic() >= deadline:
            raise TimeoutError from None
        _current.why = str(exc)[:200]
        return None  # (refused, unresolvable: s3fs retries as configured, and says so)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        if _stop_watch() or time.monotonic() >= deadline or isinstance(exc, urllib3.exceptions.TimeoutError):
            raise TimeoutError from None
        if isinstance(exc, OSError):
            raise
        _current.why = str(exc)[:200]
        return None  # (reset: s3fs retries as configured, and reports)
    finally:
        _stop_watch()
        _current.deadline = None
        if response is not None:
            response.close()  # (not handed back to the pool: unread, cut off or over the cap)


def answered(fs: Any, read: bool) -> None:
    """Count a presigned GET handed to s3fs (``read`` False) or not: after
    :data:`RESTING_AFTER` in a row (a CA bundle this path does not see, a bucket in another
    region, a skewed clock), reads through ``fs`` skip this path for :data:`REST_SECONDS`, with a
    warning each time such a rest begins."""
    key = id(fs)
    if read:
        _misses.pop(key, None)
        return
    count = _misses.get(key, (0, 0.0))[0] + 1
    if count < RESTING_AFTER:
        _misses[key] = (count, 0.0)
        return
    _misses[key] = (0, time.monotonic() + REST_SECONDS)
    log.warning("zstagger: S3 GETs through presigned URLs keep failing (last: %s); reading through s3fs "
                "alone for %d s", getattr(_current, "why", "") or "?", REST_SECONDS)


def resting(fs: Any) -> bool:
    """Whether reads through ``fs`` skip this path for now (see :func:`answered`)."""
    return _misses.get(id(fs), (0, 0.0))[1] > time.monotonic()


def _stop_watch() -> bool:
    """Stop this thread's watch; whether it had fired (cut the socket off) first."""
    watch, _current.watch = getattr(_current, "watch", None), None
    if watch is None:
        return bool(getattr(_current, "fired", False))
    watch.cancel()
    _current.fired = watch.fired
    return watch.fired


def _watched(connection: Any) -> Any:
    """``connection`` (urllib3's class) under this thread's deadline: the name resolved and each
    address tried with the time that is left, and the socket cut off at the deadline from the
    moment the request is sent (status line, headers, body)."""
    import urllib3

    class Watched(connection):
        def _new_conn(self) -> socket.socket:
            deadline = getattr(_current, "deadline", None)
            if deadline is None:
                return super()._new_conn()
            try:
                addresses = resolve_allowed(self._dns_host, self.port, True, deadline - time.monotonic())
            except socket.gaierror as exc:
                raise urllib3.exceptions.NameResolutionError(self.host, self, exc) from None
            except TimeoutError:
                raise urllib3.exceptions.ConnectTimeoutError(self, f"resolving {self.host} timed out") from None
            error: OSError | None = None
            for address in addresses:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    sock = socket.create_connection((address, self.port), left)
                except OSError as exc:
                    error = exc
                    continue
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                return sock
            if error is None or time.monotonic() >= deadline or isinstance(error, TimeoutError):
                raise urllib3.exceptions.ConnectTimeoutError(self, f"connecting to {self.host} timed out")
            raise urllib3.exceptions.NewConnectionError(self, f"Failed to establish a new connection: {error}")

        def getresponse(self, *args: Any, **kwargs: Any) -> Any:
            deadline = getattr(_current, "deadline", None)
            if deadline is not None and self.sock is not None:
                _current.watch, _current.fired = deadlines.watch(self.sock, deadline), False
            return super().getresponse(*args, **kwargs)

    return Watched


def _pool(fs: Any) -> Any:
    """The process's pool for ``fs``'s TLS settings, verified as the SDK verifies: the ``verify``
    client option, else the CA bundle of the AWS configuration (AWS_CA_BUNDLE or ``ca_bundle``
    in the config file), else botocore's bundle."""
    verify = (getattr(fs, "client_kwargs", None) or {}).get("verify")
    if verify is None:
        session = getattr(fs, "session", None)
        verify = (session.get_config_variable("ca_bundle") if session is not None else None) or True
    with _lock:
        pool = _pools.get(verify)
        if pool is None:
            import urllib3
            from botocore.httpsession import get_cert_path

            tls = {"cert_reqs": "CERT_NONE"} if verify is False else {"ca_certs": get_cert_path(verify)}
            pool = _pools[verify] = urllib3.PoolManager(num_pools=16, maxsize=64, block=False, **tls)

            class Plain(urllib3.HTTPConnectionPool):
                ConnectionCls = _watched(urllib3.connection.HTTPConnection)

            class TLS(urllib3.HTTPSConnectionPool):
                ConnectionCls = _watched(urllib3.connection.HTTPSConnection)

            pool.pool_classes_by_scheme = {"http": Plain, "https": TLS}
        return pool


def _forget_after_fork() -> None:  # a forked worker opens its own connections
    global _lock
    _pools.clear()
    _misses.clear()
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
