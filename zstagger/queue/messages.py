"""How image references travel inside JSON task messages."""

from __future__ import annotations

import base64
import os
from typing import Any

from ..errors import ConfigurationError
from ..images import ImageInput, NamedBytes, is_url


def encode_ref(ref: ImageInput, max_bytes: int) -> str | dict[str, Any]:
    """A JSON-safe form of one reference; bytes are base64 and capped at ``max_bytes``."""
    if isinstance(ref, NamedBytes):
        return {**encode_ref(ref.data, max_bytes), "name": ref.name}
    if isinstance(ref, (bytes, bytearray, memoryview)):
        data = bytes(ref)
        if len(data) > max_bytes:
            raise ConfigurationError(
                f"an image sent as bytes is {len(data):,} bytes, over the {max_bytes:,}-byte limit "
                "(ZSTAGGER_MAX_UPLOAD_BYTES); send a URL or a shared path instead"
            )
        return {"b64": base64.b64encode(data).decode("ascii")}
    if isinstance(ref, os.PathLike):
        ref = os.fspath(ref)
    if not isinstance(ref, str):
        raise ConfigurationError(f"cannot enqueue {type(ref).__name__}: give paths, URLs or bytes")
    if not ref.strip() or any(c in ref for c in "\0\n\r"):
        raise ConfigurationError(f"malformed image reference {ref!r}")
    if "://" in ref[:16] and not is_url(ref):
        raise ConfigurationError(f"unsupported URL scheme in {ref!r}: only http:// and https:// can be fetched")
    if is_url(ref):
        from urllib.parse import urlsplit

        try:
            host = urlsplit(ref).hostname
        except ValueError as exc:
            raise ConfigurationError(f"malformed URL {ref!r}: {exc}") from None
        if not host:
            raise ConfigurationError(f"malformed URL {ref!r}: no host")
    return ref


def decode_ref(value: str | dict[str, Any]) -> ImageInput:
    if isinstance(value, dict):
        data = base64.b64decode(value["b64"])
        return NamedBytes(value["name"], data) if value.get("name") else data
    return value
