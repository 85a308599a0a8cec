"""The connection guard of ``zstagger serve``: slow or idle clients cannot hold the server.

uvicorn closes idle keep-alive connections, but a connection whose request headers never
finish (slowloris: a byte now and then, or nothing at all) is kept for ever, and enough of
them use up the process's file descriptors: accept fails, every client is refused. Here, as
the HTTP protocol uvicorn runs (``uvicorn.run(..., http=GuardedHTTPProtocol)``):

- a connection has ``ZSTAGGER_HEADER_TIMEOUT`` seconds to send a request's headers, counted
  from when it opened or its previous response was sent; then it is closed;
- at most ``ZSTAGGER_MAX_CONNECTIONS`` connections are open at once (0: as many as the
  process's open-file limit, ``ulimit -n``, leaves room for, at most 8192; see
  :func:`connection_limit`).
  A connection over the limit closes the oldest one still waiting for its headers, so a
  client that sends a request at once is served through a flood of slow ones; when every
  connection has a request in progress, the new one is refused (closed).

asyncio accepts up to the listen backlog of pending connections at once before any of them
is looked at, so the backlog uvicorn is given (:func:`listen_backlog`) is sized from the
open-file limit too: connections, a burst of accepts and what the process holds otherwise
stay within the limit, and accept never fails for lack of descriptors. The kernel's queue of
connections waiting to be accepted is then widened again to :data:`LISTEN_QUEUE` (at the
first connection), so that a burst of connects from a flood is queued, not dropped, and a
normal client's connect does not wait for a SYN retransmission. ``zstagger serve`` first
raises its soft open-file limit to the hard one (:func:`raise_open_file_limit`).

What is closed is counted and said in one warning line at most every minute. The request
body is the application's to bound (:mod:`.limits`). Small on purpose: review it alone.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import time
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from ..settings import Settings

log = logging.getLogger("zstagger.service.connections")

REPORT_EVERY = 60.0  # seconds between warnings about closed connections
DEFAULT_MAX_CONNECTIONS = 8192
RESERVE = 64  # descriptors kept free beyond what the process holds besides client connections
ACCEPT_BURSTS = 4
LISTEN_QUEUE = 4096  # connections the kernel queues for accept (it caps this at net.core.somaxconn)


def _open_file_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def raise_open_file_limit() -> int:
    """Raise this process's soft open-file limit to its hard limit (as Go's runtime does; the
    soft limit is often 1024 where the hard one is far higher); returns the limit in effect."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return _open_file_limit()


def listen_backlog() -> int:
    """The listen backlog for ``zstagger serve``: uvicorn's 2048, less under a low open-file limit."""
    return min(2048, max(16, _open_file_limit() // 16))


def _descriptors_in_use() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 64


def connection_limit(configured: int, reserve: int = 64) -> int:
    """The connection cap in effect: the setting, or (0) what the open-file limit leaves once
    bursts of accepts and ``reserve`` descriptors for everything else (model files, Redis,
    image downloads) are set aside, and at most :data:`DEFAULT_MAX_CONNECTIONS` (each idle
    connection costs memory). A connection is looked at two loop turns after it is accepted
    and an evicted one's descriptor is released a turn later, while every turn may accept a
    backlog more: :data:`ACCEPT_BURSTS` backlogs of headroom."""
    if configured > 0:
        return configured
    return max(16, min(DEFAULT_MAX_CONNECTIONS, _open_file_limit() - ACCEPT_BURSTS * listen_backlog() - reserve))


def widen_listen_queue(address: tuple) -> bool:
    """Set the kernel's accept queue of this process's listening socket bound to ``address``
    to :data:`LISTEN_QUEUE` (asyncio keeps accepting only uvicorn's backlog per wake-up).
    Linux only (it finds the socket in /proc/self/fd); True if one was found."""
    try:
        descriptors = os.listdir("/proc/self/fd")
    except OSError:
        return False
    found = False
    for name in descriptors:
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except (OSError, ValueError):
            continue
        try:
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            if listening and sock.getsockname()[:2] == tuple(address[:2]):
                sock.listen(LISTEN_QUEUE)
                found = True
        except OSError:
            pass
        finally:
            sock.close()
    return found


class _Guard:
    """This process's bookkeeping: the settings, the connections waiting for headers (oldest
    first), and what was closed since the last warning."""

    def __init__(self) -> None:
        settings = Settings()
        self.header_timeout = settings.header_timeout
        self.configured_limit = settings.max_connections
        self.reserve = _descriptors_in_use() + RESERVE
        self.reserve_at = time.monotonic()
        self.waiting: dict[Any, None] = {}  # insertion-ordered: the oldest waiting connection first
        self.closed = {"slow": 0, "evicted": 0, "refused": 0}
        self.reported_at = 0.0
        self.queue_widened = False

    def limit(self, connections: int) -> int:
        """The cap now. What the process holds besides its ``connections`` (model files,
        threads, Redis, downloads) is counted again every second, plus room to spare."""
        now = time.monotonic()
        if self.configured_limit == 0 and now - self.reserve_at >= 1.0:
            self.reserve_at = now
            self.reserve = max(0, _descriptors_in_use() - connections) + RESERVE
        return connection_limit(self.configured_limit, self.reserve)

    def closed_one(self, why: str) -> None:
        self.closed[why] += 1
        now = time.monotonic()
        if now - self.reported_at >= REPORT_EVERY:
            self.reported_at = now
            slow, evicted, refused = self.closed["slow"], self.closed["evicted"], self.closed["refused"]
            limit = connection_limit(self.configured_limit, self.reserve)
            self.closed = {"slow": 0, "evicted": 0, "refused": 0}
            log.warning("zstagger: closed %d connection(s) whose request headers did not arrive within %gs "
                        "(ZSTAGGER_HEADER_TIMEOUT), %d waiting for headers and refused %d at the limit of %d open "
                        "connections (ZSTAGGER_MAX_CONNECTIONS); next report in %ds at most",
                        slow, self.header_timeout, evicted, refused, limit,
                        REPORT_EVERY)


_guard: _Guard | None = None


def guard() -> _Guard:
    global _guard
    if _guard is None:
        _guard = _Guard()
    return _guard


class GuardedHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's HTTP protocol (h11, or httptools when installed) with a header deadline and
    a connection cap. Both protocols start a request cycle (``self.cycle``) once a request's
    headers are complete; until then, the connection is waiting for headers."""

    _header_timer: Any = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._wait_for_headers()
        g = guard()
        if not g.queue_widened and self.server is not None:
            g.queue_widened = True
            widen_listen_queue(self.server)
        if len(self.connections) > g.limit(len(self.connections)):
            oldest = next((c for c in g.waiting if c is not self), None)
            if oldest is not None:
                oldest._close("evicted")
            else:
                self._close("refused")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._between_requests():
            self._headers_arrived()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._between_requests() and not self.transport.is_closing():
            self._wait_for_headers()  # the next request on this keep-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_arrived()
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _wait_for_headers(self) -> None:
        g = guard()
        self._headers_arrived()
        g.waiting[self] = None
        self._header_timer = self.loop.call_later(g.header_timeout, self._headers_too_slow)

    def _headers_arrived(self) -> None:
        guard().waiting.pop(self, None)
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._between_requests():
            self._close("slow")

    def _close(self, why: str) -> None:
        self._headers_arrived()
        if not self.transport.is_closing():
            guard().closed_one(why)
            self.transport.abort()  # no lingering: the descriptor is given back now
