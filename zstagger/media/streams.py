"""A media item's sampled frames as a stream, with what decoding found out on the way.

:class:`FrameStream` is what the decoders (:mod:`.animation`, :mod:`.video`) return: iterate
it for the sampled :class:`~.frames.Frame` s, one at a time (nothing but the current frame
is held), then read ``duration``, ``frames_decoded`` and ``truncated``. Closing it (or
leaving the loop early) closes the decoder.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

from .frames import Frame
from .limits import DecodeMeter


@dataclass
class FrameStream:
    kind: str  # "animation" or "video"
    meter: DecodeMeter
    duration: float | None = None  # seconds: declared first, then what was decoded
    truncated: bool = False  # the stream broke off (damaged or cut short); the frames before it were judged
    _frames: Generator[Frame, None, None] | None = field(default=None, repr=False)

    def __iter__(self) -> Iterator[Frame]:
        assert self._frames is not None
        return self._frames

    @property
    def frames_decoded(self) -> int:
        return self.meter.frames

    def close(self) -> None:
        if self._frames is not None:
            self._frames.close()


def metered(stream: FrameStream, frames: Iterator[Frame]) -> Generator[Frame, None, None]:
    """``frames`` with the meter running only while they are being decoded."""
    meter = stream.meter
    meter.resume()
    try:
        for frame in frames:
            meter.pause()
            yield frame
            meter.resume()
    finally:
        meter.pause()
