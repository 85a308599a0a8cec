"""The limits every animation and video decode obeys, and the counter that enforces them.

One owner: :class:`MediaLimits` (built from settings) holds them; :class:`DecodeMeter` is
told about every decoded frame and raises the :class:`~zstagger.errors.ImageLoadError` that
becomes the error record (``too_long``, ``too_many_frames``, ``too_many_pixels``,
``media_timeout``). Counts are of frames actually decoded, so a file that lies about its
length is stopped where the limit is, not where its header says it ends. Decode time is
time spent decoding only (not the time the frames wait to be embedded).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ImageLoadError

if TYPE_CHECKING:
    from ..settings import Settings


@dataclass(frozen=True)
class MediaLimits:
    max_duration: float = 600.0
    max_frames: int = 40_000
    max_frame_pixels: int = 16_777_216
    max_total_pixels: int = 60_000_000_000
    timeout: float = 120.0

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaLimits:
        return cls(settings.media_max_duration, settings.media_max_frames, settings.media_max_frame_pixels,
                   settings.media_max_total_pixels, settings.media_timeout)

    def check_duration(self, seconds: float | None, what: str = "declared") -> None:
        if seconds is not None and seconds > self.max_duration:
            raise ImageLoadError("too_long", f"media is {seconds:,.1f} s long ({what}), over the {self.max_duration:,.0f}-second "
                                 "limit; raise ZSTAGGER_MEDIA_MAX_DURATION if it is genuine")

    def check_frame_size(self, width: int, height: int, what: str = "frame") -> None:
        if width * height > self.max_frame_pixels:
            raise ImageLoadError("too_many_pixels", f"{what} is {width}x{height} = {width * height:,} pixels, over the limit of "
                                 f"{self.max_frame_pixels:,}; raise ZSTAGGER_MEDIA_MAX_FRAME_PIXELS if it is genuine")
        if width <= 0 or height <= 0:
            raise ImageLoadError("invalid_media", f"{what} has no pixels ({width}x{height})")

    def check_frame_count(self, frames: int, what: str = "has") -> None:
        if frames > self.max_frames:
            raise ImageLoadError("too_many_frames", f"media {what} more than {self.max_frames:,} frames; raise "
                                 "ZSTAGGER_MEDIA_MAX_FRAMES if it is genuine")

    def check_total_pixels(self, pixels: int, what: str = "decoding it takes") -> None:
        if pixels > self.max_total_pixels:
            raise ImageLoadError("too_many_pixels", f"{what} more than {self.max_total_pixels:,} pixels over all frames; raise "
                                 "ZSTAGGER_MEDIA_MAX_TOTAL_PIXELS if it is genuine")


class DecodeMeter:
    """Counts decoded frames, pixels and decoding time against :class:`MediaLimits`.

    The decoder calls :meth:`resume` when it starts working (again) and :meth:`pause`
    when it hands a frame over, so time spent waiting on the consumer does not count.
    """

    def __init__(self, limits: MediaLimits):
        self.limits = limits
        self.frames = 0
        self.pixels = 0
        self.busy = 0.0
        self._since: float | None = None

    def resume(self) -> None:
        self._since = time.monotonic()

    def pause(self) -> None:
        if self._since is not None:
            self.busy += time.monotonic() - self._since
            self._since = None

    def elapsed(self) -> float:
        return self.busy + (time.monotonic() - self._since if self._since is not None else 0.0)

    def check_time(self) -> None:
        if self.elapsed() > self.limits.timeout:
            raise ImageLoadError("media_timeout", f"decoding took more than {self.limits.timeout:,.0f} s (after {self.frames:,} "
                                 "frames); raise ZSTAGGER_MEDIA_TIMEOUT if the media is genuine", transient=False)

    def frame(self, width: int, height: int, seconds: float) -> None:
        """One more frame decoded, ``seconds`` into the media."""
        self.frames += 1
        self.pixels += width * height
        self.limits.check_frame_size(width, height)
        self.limits.check_frame_count(self.frames, "decodes to")
        self.limits.check_total_pixels(self.pixels)
        self.limits.check_duration(seconds, "by the frames decoded")
        self.check_time()
