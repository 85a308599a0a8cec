"""The limits every outbound request obeys (:class:`FetchPolicy`): one deadline, a size cap,
and whether private addresses may be reached.

Imports nothing from zstagger but settings' field names, so any layer can build one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..settings import Settings


@dataclass(frozen=True)
class FetchPolicy:
    """Limits of one outbound HTTP exchange.

    ``timeout`` bounds the whole exchange (seconds: DNS, connect, TLS, headers, body,
    redirects included); ``max_bytes`` caps the body read; ``allow_private_urls`` lets a
    request reach private, loopback or link-local addresses (a trusted network only).
    """

    timeout: float = 10.0
    max_bytes: int = 50 * 1024 * 1024
    allow_private_urls: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchPolicy:
        """Image URLs' limits (ZSTAGGER_URL_TIMEOUT, ZSTAGGER_MAX_IMAGE_BYTES, ZSTAGGER_ALLOW_PRIVATE_URLS)."""
        return cls(timeout=settings.url_timeout, max_bytes=settings.max_image_bytes,
                   allow_private_urls=settings.allow_private_urls)


DEFAULT_POLICY = FetchPolicy()  # the defaults (frozen, so safe to share as a default argument)
