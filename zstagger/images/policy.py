"""The limits applied to every image zstagger reads (one owner: every entry point uses this).

Imports nothing from zstagger but settings' field names, so any layer can build one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..settings import Settings


@dataclass(frozen=True)
class ImagePolicy:
    """Limits applied to every image zstagger reads.

    ``max_pixels`` refuses decompression bombs before any pixel is decoded; URL fetches
    have a timeout (seconds, for the whole download), a size cap, and may not reach
    private, loopback or link-local addresses unless ``allow_private_urls`` is set.
    """

    url_timeout: float = 10.0
    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 64_000_000
    allow_private_urls: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> ImagePolicy:
        return cls(
            url_timeout=settings.url_timeout,
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            allow_private_urls=settings.allow_private_urls,
        )
