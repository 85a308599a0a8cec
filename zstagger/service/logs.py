"""Logging of ``zstagger serve`` under attack: a repeated warning or error is written a few
times, not thousands.

A flood (descriptors running out, malformed requests, a client that keeps failing the same
way) makes the same line, often with its traceback, come back many times a second; written
each time it fills disks and hides everything else. :class:`RepeatLimiter` lets the first
:data:`BURST` records of each kind (logger, level, message template, exception type) through
per :data:`WINDOW` seconds and drops the rest; the first record let through after some were
dropped says how many. Records below WARNING (the access log, information) pass untouched.
"""

from __future__ import annotations

import logging
import re
import threading
import time

WINDOW = 60.0
BURST = 5
# Loggers whose records repeat under a flood: asyncio (accept failures), uvicorn (invalid
# requests, exceptions in the application), the service's own.
_NUMBERS = re.compile(r"\d+")
LOGGERS = ("asyncio", "uvicorn.error", "zstagger.service", "zstagger.service.connections")


class RepeatLimiter(logging.Filter):
    def __init__(self, window: float = WINDOW, burst: int = BURST):
        super().__init__()
        self.window, self.burst = window, burst
        self._seen: dict[tuple, list[float | int]] = {}  # kind -> [window start, let through, dropped]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        exc_type = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else None
        # The message's first line with its numbers blanked: asyncio puts descriptors and
        # addresses in its messages, which would make every record look new.
        template = _NUMBERS.sub("#", str(record.msg).split("\n", 1)[0][:200])
        kind = (record.name, record.levelno, template, exc_type)
        now = time.monotonic()
        with self._lock:
            state = self._seen.get(kind)
            if state is None or now - state[0] >= self.window:
                dropped = int(state[2]) if state is not None else 0
                self._seen[kind] = [now, 1, 0]
                if len(self._seen) > 10_000:  # bounded: forget the oldest kinds
                    for old in list(self._seen)[:5_000]:
                        del self._seen[old]
            elif state[1] < self.burst:
                state[1] += 1
                dropped = 0
            else:
                state[2] += 1
                return False
        if dropped:
            note = f" [{dropped} more like this in the last {self.window:g}s were not logged]"
            record.msg = str(record.msg) + note.replace("%", "%%") if record.args else str(record.msg) + note
        return True


def limit_repeats(loggers: tuple[str, ...] = LOGGERS) -> RepeatLimiter:
    """Install one :class:`RepeatLimiter` on these loggers (once per process; returns it)."""
    for name in loggers:
        logger = logging.getLogger(name)
        for existing in logger.filters:
            if isinstance(existing, RepeatLimiter):
                return existing
    limiter = RepeatLimiter()
    for name in loggers:
        logging.getLogger(name).addFilter(limiter)
    return limiter
