"""The limits applied to every image zstagger reads (one owner: every entry point uses this).

A URL is fetched under the :class:`~zstagger.net.FetchPolicy` this policy gives
(:attr:`ImagePolicy.fetch`). Imports nothing from zstagger but that and settings' field
names, so any layer can build one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..net.policy import FetchPolicy

if TYPE_CHECKING:
    from ..settings import Settings


@dataclass(frozen=True)
class ImagePolicy:
    """Limits applied to every image zstagger reads.

    ``max_bytes`` caps the encoded bytes, whatever they come from (file, URL, bytes);
    ``max_pixels``, ``max_jpeg_scans`` and ``max_jpeg_scan_pixels`` (scans x pixels: the
    decoding work) refuse decompression and scan bombs before any pixel is decoded;
    ``max_decode_bytes`` is the process-wide memory budget for images being decoded at once.
    URL fetches have a deadline (seconds, for the whole exchange) and may not reach private,
    loopback or link-local addresses unless ``allow_private_urls``. Object stores and plugin
    sources (:mod:`zstagger.sources`) obey the same byte cap and deadline, and read only the
    locations ``source_allow`` names, when it names any.
    """

    url_timeout: float = 10.0
    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 64_000_000
    max_jpeg_scans: int = 100
    max_jpeg_scan_pixels: int = 1_000_000_000
    max_decode_bytes: int = 1024 * 1024 * 1024
    allow_private_urls: bool = False
    source_allow: tuple[str, ...] = ()  # object-store prefixes that may be read (ZSTAGGER_SOURCE_ALLOW; empty: any)

    @classmethod
    def from_settings(cls, settings: Settings) -> ImagePolicy:
        return cls(
            url_timeout=settings.url_timeout,
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            max_jpeg_scans=settings.max_jpeg_scans,
            max_jpeg_scan_pixels=settings.max_jpeg_scan_pixels,
            max_decode_bytes=settings.max_decode_bytes,
            allow_private_urls=settings.allow_private_urls,
            source_allow=tuple(settings.source_allow),
        )

    @property
    def fetch(self) -> FetchPolicy:
        """The limits an image URL is fetched under: this policy's deadline, size cap and address rule."""
        return FetchPolicy(timeout=self.url_timeout, max_bytes=self.max_bytes, allow_private_urls=self.allow_private_urls)


DEFAULT_POLICY = ImagePolicy()  # the defaults (frozen, so safe to share as a default argument)
