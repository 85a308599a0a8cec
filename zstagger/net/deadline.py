"""A hard deadline on a socket: at the deadline it is shut down, whatever is blocked on it.

Per-operation timeouts do not bound an exchange: ``http.client`` reads the status line and
headers with one ``recv`` per line fragment, each with the full timeout, so a server that
drips one byte a second never times out, and a TLS handshake is the same. One watchdog
thread per process holds a heap of deadlines and shuts each socket down when its deadline
passes; the blocked call then returns or raises at once. Cheaper than a thread per fetch.
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
import time


class Watch:
    """One socket under watch; :attr:`fired` says whether its deadline cut it off."""

    __slots__ = ("_done", "_sock", "deadline", "fired")

    def __init__(self, sock: socket.socket, deadline: float):
        # A duplicate descriptor: wrapping the socket in TLS detaches the original object,
        # but shutting down any descriptor of a socket shuts the socket down (fromfd also
        # takes a TLS socket, whose dup() is refused).
        self._sock = socket.fromfd(sock.fileno(), sock.family, sock.type)
        self.deadline = deadline
        self.fired = False
        self._done = False

    def cancel(self) -> None:
        with _watchdog.lock:
            self._done = True
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _fire(self) -> None:  # called by the watchdog thread with the lock held
        if self._done or self._sock is None:
            return
        self.fired = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Watchdog:
    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.heap: list[tuple[float, int, Watch]] = []
        self.counter = itertools.count()
        self.thread: threading.Thread | None = None

    def add(self, watch: Watch) -> None:
        with self.lock:
            heapq.heappush(self.heap, (watch.deadline, next(self.counter), watch))
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="zstagger-deadlines", daemon=True)
                self.thread.start()
            self.lock.notify()

    def _run(self) -> None:
        with self.lock:
            while True:
                while self.heap and self.heap[0][2]._done:
                    heapq.heappop(self.heap)
                if not self.heap:
                    self.lock.wait()
                    continue
                wait = self.heap[0][0] - time.monotonic()
                if wait > 0:
                    self.lock.wait(wait)
                    continue
                heapq.heappop(self.heap)[2]._fire()


_watchdog = _Watchdog()


def watch(sock: socket.socket, deadline: float) -> Watch:
    """Shut ``sock`` down at ``deadline`` (``time.monotonic()`` seconds) unless cancelled first."""
    entry = Watch(sock, deadline)
    _watchdog.add(entry)
    return entry


def _new_watchdog_after_fork() -> None:  # a forked child (a Celery worker process) has no watchdog thread
    global _watchdog
    _watchdog = _Watchdog()


os.register_at_fork(after_in_child=_new_watchdog_after_fork)
