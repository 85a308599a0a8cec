"""The hardened HTTP client: one deadline, a size cap and SSRF protection for every request.

Every outbound request zstagger makes goes through here: image URLs (:mod:`zstagger.images`
maps a :class:`~zstagger.errors.FetchError` to an error record) and webhook deliveries
(which use it directly). Security-sensitive: keep it small enough to review alone. Every hop of a redirect chain is
resolved once, checked against the address policy (:mod:`.addresses`), and connected to by
that address. ``ZSTAGGER_URL_TIMEOUT`` bounds the whole exchange, redirects included: DNS
(run with a timeout), connect, TLS handshake, status line, headers and body. Each socket
operation gets the time that is left, and a watchdog (:mod:`.deadline`) shuts the socket
down at the deadline, which also stops a server that drips its headers a byte at a time.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urljoin, urlsplit

from ..errors import FetchError, UrlBlockedError
from . import deadline as deadlines
from .addresses import resolve_allowed
from .policy import DEFAULT_POLICY, FetchPolicy

_MAX_REDIRECTS = 5
_USER_AGENT = "zstagger (+https://pypi.org/project/zstagger/)"


def http_get(url: str, policy: FetchPolicy = DEFAULT_POLICY, accept: str = "*/*") -> bytes:
    """Download a resource with a deadline, a size cap and SSRF protection.

    Each hop of a redirect chain is resolved once and checked; the connection is made to
    that checked address (no second DNS lookup an attacker could answer differently).
    """
    deadline = time.monotonic() + policy.timeout
    for _ in range(_MAX_REDIRECTS + 1):
        with _hop(url, policy, deadline) as hop:
            conn = hop.open()
            conn.request("GET", hop.path, headers={"User-Agent": _USER_AGENT, "Accept": accept})
            conn.refresh_timeout()
            resp = conn.getresponse()
            if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                url = urljoin(url, resp.getheader("Location"))
                continue
            if resp.status != 200:
                transient = resp.status in (408, 425, 429) or resp.status >= 500
                raise FetchError("fetch_failed", f"HTTP {resp.status} {resp.reason} from {url}", transient=transient)
            return _read_capped(conn, resp, url, policy)
    raise FetchError("fetch_failed", f"more than {_MAX_REDIRECTS} redirects fetching {url}")


def http_post(url: str, body: bytes, headers: dict[str, str], policy: FetchPolicy = DEFAULT_POLICY) -> tuple[int, str]:
    """POST ``body`` under the same deadline and address policy as downloads (webhook
    deliveries use it); redirects are not followed. Returns (status, reason); raises
    :class:`~zstagger.errors.FetchError` with the same kinds as :func:`http_get`."""
    deadline = time.monotonic() + policy.timeout
    with _hop(url, policy, deadline) as hop:
        conn = hop.open()
        conn.request("POST", hop.path, body=body, headers={"User-Agent": _USER_AGENT, **headers})
        conn.refresh_timeout()
        resp = conn.getresponse()
        resp.read(64 * 1024)  # the answer's body is not needed; read a bounded part of it
        return resp.status, resp.reason


class _Hop:
    """One request to one URL: its parsed parts, and the pinned connection once opened."""

    def __init__(self, url: str, policy: FetchPolicy, deadline: float):
        self.url, self.policy, self.deadline = url, policy, deadline
        self.host: str | None = None
        self.path = "/"
        self.conn: _PinnedHTTP | _PinnedHTTPS | None = None

    def open(self) -> _PinnedHTTP | _PinnedHTTPS:
        self.parts = urlsplit(self.url)  # a malformed URL raises ValueError here: invalid_url
        self.host = self.parts.hostname
        self.path = (self.parts.path or "/") + (f"?{self.parts.query}" if self.parts.query else "")
        scheme = self.parts.scheme.lower()
        if scheme not in ("http", "https") or not self.parts.hostname:
            raise FetchError("invalid_url", f"not an http(s) URL: {self.url}")
        port = self.parts.port or (443 if scheme == "https" else 80)
        left = _remaining(self.deadline, self.url, self.policy)
        address = resolve_allowed(self.parts.hostname, port, self.policy.allow_private_urls, left)[0]
        self.conn = _connection(scheme, self.parts.hostname, port, address, self.deadline)
        return self.conn


@contextmanager
def _hop(url: str, policy: FetchPolicy, deadline: float) -> Iterator[_Hop]:
    """Every failure of one exchange as a FetchError with a stable kind; the connection closed."""
    hop = _Hop(url, policy, deadline)
    try:
        yield hop
    except UrlBlockedError as exc:
        raise FetchError(
            "url_blocked", f"{exc}; fetching private, loopback or link-local addresses is refused "
            "(set ZSTAGGER_ALLOW_PRIVATE_URLS=1 to allow it on a trusted network)",
        ) from None
    except FetchError:
        raise
    except Exception as exc:
        conn = hop.conn
        # Whatever a socket shut down at the deadline made http.client or ssl raise, it is a timeout.
        if time.monotonic() >= deadline or (conn is not None and conn.timed_out) or isinstance(exc, TimeoutError):
            raise _timeout(url, policy) from None
        if isinstance(exc, ValueError) and conn is None:  # urlsplit's complaint about a malformed port
            raise FetchError("invalid_url", f"malformed URL {url!r}: {exc}") from None
        if isinstance(exc, socket.gaierror):
            raise FetchError("fetch_failed", f"cannot resolve host {hop.host!r}: {exc.strerror}",
                             transient=True) from None
        if isinstance(exc, ssl.SSLError):
            raise FetchError("fetch_failed", f"TLS error fetching {url}: {exc}") from None
        if isinstance(exc, (OSError, http.client.HTTPException)):
            raise FetchError("fetch_failed", f"could not fetch {url}: {exc}", transient=True) from None
        raise
    finally:
        if hop.conn is not None:
            hop.conn.close()


def _timeout(url: str, policy: FetchPolicy) -> FetchError:
    return FetchError("fetch_timeout", f"timed out after {policy.timeout:g}s fetching {url}", transient=True)


def _remaining(deadline: float, url: str, policy: FetchPolicy) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _timeout(url, policy)
    return left


def _read_capped(conn: _Pinned, resp: http.client.HTTPResponse, url: str, policy: FetchPolicy) -> bytes:
    length = resp.getheader("Content-Length")
    if length and length.isdigit() and int(length) > policy.max_bytes:
        raise FetchError("too_large", f"{url} is {int(length):,} bytes, over the {policy.max_bytes:,}-byte limit")
    chunks, total = [], 0
    while True:
        conn.refresh_timeout()
        chunk = resp.read1(min(1 << 16, policy.max_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > policy.max_bytes:
            raise FetchError("too_large", f"{url} is over the {policy.max_bytes:,}-byte limit")


class _Pinned:
    """Connects to a pre-checked IP (while speaking to ``host``), under one deadline."""

    pinned_address: str
    deadline: float
    watch: deadlines.Watch | None = None
    pinned_socket: socket.socket | None = None

    def _open_socket(self) -> socket.socket:
        sock = socket.create_connection((self.pinned_address, self.port), self._left())  # type: ignore[attr-defined]
        self.watch = deadlines.watch(sock, self.deadline)  # before any TLS handshake
        return sock

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        return left

    def refresh_timeout(self) -> None:
        """Give the next socket operation only the time that is left.

        (http.client may already have handed the socket over to the response, so set it
        on the socket we connected.)
        """
        if self.pinned_socket is not None:
            self.pinned_socket.settimeout(self._left())

    @property
    def timed_out(self) -> bool:
        return self.watch is not None and self.watch.fired

    def close(self) -> None:
        if self.watch is not None:
            self.watch.cancel()
        super().close()  # type: ignore[misc]


class _PinnedHTTP(_Pinned, http.client.HTTPConnection):
    def connect(self) -> None:
        self.sock = self.pinned_socket = self._open_socket()


class _PinnedHTTPS(_Pinned, http.client.HTTPSConnection):
    def connect(self) -> None:
        sock = self._open_socket()
        sock.settimeout(self._left())
        self.sock = self.pinned_socket = self._context.wrap_socket(sock, server_hostname=self.host)


def _connection(scheme: str, host: str, port: int, address: str, deadline: float) -> _PinnedHTTP | _PinnedHTTPS:
    cls = _PinnedHTTPS if scheme == "https" else _PinnedHTTP
    conn = cls(host, port, timeout=max(0.001, deadline - time.monotonic()))
    conn.pinned_address = address
    conn.deadline = deadline
    return conn
