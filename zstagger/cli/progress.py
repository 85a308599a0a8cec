"""Progress bars on stderr whose time estimate leaves the warm-up out.

The first results of a run arrive after the model loaded, the taxonomy's text side was
encoded and the encoders warmed up; measured from the start, as tqdm does, a 30-second run
reads as half an hour once its first batch is done. Here the rate is measured from the
first update on: the first batch (the first update, and the updates that arrive with it,
within :data:`WARMUP_BURST` seconds: a command that updates per image gets a batch's
images at once) is warm-up, and until a later update comes there is no estimate ("?").
"""

from __future__ import annotations

import sys
from collections.abc import Callable

WARMUP_BURST = 0.1  # seconds: updates this close to the first one belong to the first batch


class SteadyRate:
    """Items per second after the warm-up, from the updates' count and times (a pure estimator).

    ``update(n, now)`` after each update, with the running count; ``rate()`` is None until
    an update arrives after the warm-up burst.
    """

    def __init__(self, burst: float = WARMUP_BURST):
        self.burst = burst
        self.start: tuple[float, int] | None = None  # when the first update came, and the count the warm-up ends at
        self.last: tuple[float, int] | None = None

    def update(self, n: int, now: float) -> None:
        if self.start is None:
            self.start = (now, n)
        elif now - self.start[0] <= self.burst:
            self.start = (self.start[0], n)  # still the first batch
        else:
            self.last = (now, n)

    def rate(self) -> float | None:
        if self.start is None or self.last is None or self.last[0] <= self.start[0]:
            return None
        return (self.last[1] - self.start[1]) / (self.last[0] - self.start[0])

    def remaining(self, n: int, total: int) -> float | None:
        """Seconds until ``total``, at the steady rate; None while it is unknown."""
        rate = self.rate()
        return (total - n) / rate if rate else None


def progress_bar(total: int, desc: str, show: bool | None, clock: Callable[[], float] | None = None):
    """A tqdm bar on stderr (``show``: None means when stderr is a terminal) with the steady-rate
    estimate; a context manager, with ``update(count)``, ``write`` and ``close`` as tqdm's."""
    from tqdm import tqdm

    class SteadyBar(tqdm):
        def __init__(self, *args, **kwargs):
            self.steady = SteadyRate()
            super().__init__(*args, **kwargs)
            if clock is not None:  # tqdm reads its clock through this attribute
                self._time = clock
                self.start_t = self.last_print_t = clock()

        def update(self, n=1):
            if not self.disable:  # first, so that the line this update prints has the new estimate
                self.steady.update(self.n + n, self._time())
            return super().update(n)

        @property
        def format_dict(self):
            values = super().format_dict
            # 0 makes tqdm print "?" for the rate and the time left; None would make it fall back
            # to its own average since the start, warm-up included
            values["rate"] = self.steady.rate() or 0
            return values

    show = show if show is not None else sys.stderr.isatty()
    return SteadyBar(total=total, unit="img", file=sys.stderr, disable=not show, desc=desc)


__all__ = ["SteadyRate", "progress_bar"]
