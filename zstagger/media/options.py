"""What the settings say about reading and sampling animations and videos, in one object."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .limits import MediaLimits

if TYPE_CHECKING:
    from ..settings import Settings


@dataclass(frozen=True)
class MediaOptions:
    limits: MediaLimits = field(default_factory=MediaLimits)
    animation_frames: int = 64
    video_rate: float = 1.0
    scene_threshold: float = 0.12
    dedup: float = 0.01
    batch_size: int = 4
    early_exit_animation: int = 1
    early_exit_video: int = 2
    #: Video frames whose shorter side is longer are scaled down to it as they are converted to
    #: RGB (the model's preprocessing shrinks them anyway; None: full size, for exact preprocessing).
    frame_side: int | None = None
    #: Decode only a video's reference frames (see :func:`~.video.open_video`); False: every frame.
    reference_only: bool = True

    @classmethod
    def from_settings(cls, settings: Settings, frame_side: int | None = None) -> MediaOptions:
        return cls(MediaLimits.from_settings(settings), settings.media_animation_frames, settings.video_sample_rate,
                   settings.video_scene_threshold, settings.media_dedup_distance, settings.media_batch_size,
                   settings.media_early_exit_animation, settings.video_early_exit, frame_side,
                   settings.video_decode == "reference")
