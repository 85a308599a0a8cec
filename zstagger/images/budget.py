"""A process-wide budget for the memory of images being decoded at once.

A pixel limit alone does not bound memory: four loader threads each decoding a 64 MP image
need gigabytes together. Each decode first takes its estimated cost (from the header:
encoded bytes, decoded pixels, the RGB picture and the array made from it) from one budget
per process, waits while the budget is spent, and gives it back when its picture has been
turned into model input. Waiters are served in order, so a large image is not starved by a
stream of small ones. An image that needs more than the whole budget is refused.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import ImageLoadError


class DecodeBudget:
    def __init__(self, total: int):
        self.total = total
        self.used = 0
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        """Hold ``nbytes`` of the budget for the duration of the block (waiting for them first)."""
        if nbytes > self.total:
            raise ImageLoadError(
                "too_large",
                f"decoding this image needs about {nbytes / 2**20:,.0f} MiB, more than the {self.total / 2**20:,.0f} MiB "
                "allowed for images being decoded at once; raise ZSTAGGER_MAX_DECODE_BYTES if the memory is there",
            )
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                self._cond.wait_for(lambda: self._queue[0] is ticket and self.used + nbytes <= self.total)
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()
            self.used += nbytes
        try:
            yield
        finally:
            with self._cond:
                self.used -= nbytes
                self._cond.notify_all()


_budgets: dict[int, DecodeBudget] = {}
_lock = threading.Lock()


def budget_for(total: int) -> DecodeBudget:
    """The process's budget of ``total`` bytes (shared by every Tagger and loader thread)."""
    with _lock:
        if total not in _budgets:
            _budgets[total] = DecodeBudget(total)
        return _budgets[total]


def _fresh_after_fork() -> None:  # a forked child holds none of its parent's decodes
    global _lock
    _budgets.clear()
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_fresh_after_fork)
