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

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaOptions:
        return cls(MediaLimits.from_settings(settings), settings.media_animation_frames, settings.video_sample_rate,
                   settings.video_scene_threshold, settings.media_dedup_distance, settings.media_batch_size,
                   settings.media_early_exit_animation, settings.video_early_exit)
