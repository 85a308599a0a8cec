"""An S3 object's body without the SDK's cost per request: a presigned URL and a pooled GET.

Reading a 700 KB photo through s3fs costs about 4 ms of the worker's CPU (botocore's
request pipeline: endpoint rules, signing, event hooks, response parsing, a hop to fsspec's
event-loop thread), against ~15 ms of wall time to tag it on two cores. Here s3fs's own
client presigns the GET (the same endpoint, addressing style, region and credentials,
refreshed as the SDK refreshes them) and the body comes over a keep-alive connection from a
process-wide urllib3 pool, read in the calling thread.

Taken only for a plain configuration: anything this path would not honour as s3fs does
(a proxy, requester-pays, extra request arguments, any s3fs option beyond endpoint,
credentials, region, TLS verification and timeouts) leaves the read to s3fs, as does any
answer but the object's bytes (a 404 is "no such object" here too): s3fs then asks again and
reports, retries or follows as it always has. The deadline holds as on every read: connect
and headers within the time left, and the body under :mod:`zstagger.net.deadline`'s watch.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from ..net import deadline as deadlines

#: s3fs options this path honours; any other leaves reads to s3fs.
_PLAIN_OPTIONS = {"endpoint_url", "key", "secret", "token", "client_kwargs", "config_kwargs"}
_PLAIN_CLIENT = {"endpoint_url", "region_name", "verify"}
_PLAIN_CONFIG = {"connect_timeout", "read_timeout", "retries", "signature_version", "s3"}
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")

_pools: dict[Any, Any] = {}
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


async def presign(fs: Any, bucket: str, key: str, deadline: float) -> str:
    """A presigned GET for ``s3://bucket/key`` from s3fs's own client (valid past ``deadline``)."""
    await fs.set_session()
    expires = max(60, int(deadline - time.monotonic()) + 60)
    return await fs.s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires)


def get(fs: Any, url: str, last_byte: int, deadline: float) -> bytes | None:
    """Bytes ``0..last_byte`` of the object a presigned ``url`` names (one byte more when it is
    longer and the store ignored the range), or None when s3fs should read it instead;
    FileNotFoundError for a 404, TimeoutError past ``deadline``, OSError for a cut-off body."""
    import urllib3

    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    _current.deadline, _current.watch = deadline, None
    response = None
    try:
        response = _pool(fs).request("GET", url, headers={"Range": f"bytes=0-{last_byte}"}, preload_content=False,
                                     retries=False, redirect=False, timeout=urllib3.Timeout(connect=left, read=left))
        if response.status == 404:
            raise FileNotFoundError(url.partition("?")[0])
        if response.status not in (200, 206):
            return None
        expected = response.length_remaining
        body = response.read(last_byte + 2, decode_content=False)
        if expected is not None and len(body) < min(expected, last_byte + 2):
            raise OSError(f"the store closed the connection after {len(body):,} of {expected:,} bytes")
        if len(body) <= last_byte + 1 and not _fired():
            response.release_conn()
            response = None
        return body
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        if _fired() or time.monotonic() >= deadline or isinstance(exc, urllib3.exceptions.TimeoutError):
            raise TimeoutError from None
        if isinstance(exc, OSError):
            raise
        return None  # (refused, reset: s3fs retries as configured, and reports)
    finally:
        watch, _current.deadline, _current.watch = _current.watch, None, None
        if watch is not None:
            watch.cancel()
        if response is not None:
            response.close()  # (not handed back to the pool: unread, cut off or over the cap)


def _fired() -> bool:
    watch = getattr(_current, "watch", None)
    return watch is not None and watch.fired


def _watched(connection: Any) -> Any:
    """``connection`` (urllib3's class) with this thread's deadline on its socket from the
    moment the request is sent: the status line, headers and body are all cut off then."""

    class Watched(connection):
        def getresponse(self, *args: Any, **kwargs: Any) -> Any:
            deadline = getattr(_current, "deadline", None)
            if deadline is not None and self.sock is not None:
                _current.watch = deadlines.watch(self.sock, deadline)
            return super().getresponse(*args, **kwargs)

    return Watched


def _pool(fs: Any) -> Any:
    """The process's pool for ``fs``'s TLS settings: verification as the SDK does it (the
    ``verify`` client option, else AWS_CA_BUNDLE, else botocore's bundle)."""
    verify = (getattr(fs, "client_kwargs", None) or {}).get("verify", os.environ.get("AWS_CA_BUNDLE") or True)
    with _lock:
        pool = _pools.get(verify)
        if pool is None:
            import urllib3
            from botocore.httpsession import get_cert_path

            tls = {"cert_reqs": "CERT_NONE"} if verify is False else {"ca_certs": get_cert_path(verify)}
            pool = _pools[verify] = urllib3.PoolManager(num_pools=16, maxsize=16, block=False, **tls)

            class Plain(urllib3.HTTPConnectionPool):
                ConnectionCls = _watched(urllib3.connection.HTTPConnection)

            class TLS(urllib3.HTTPSConnectionPool):
                ConnectionCls = _watched(urllib3.connection.HTTPSConnection)

            pool.pool_classes_by_scheme = {"http": Plain, "https": TLS}
        return pool


def _forget_after_fork() -> None:  # a forked worker opens its own connections
    global _lock
    _pools.clear()
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
