"""API keys: ``Authorization: Bearer <key>``, checked against configured SHA-256 hashes.

Keys are never stored, only their hashes (``ZSTAGGER_API_KEYS``, comma-separated, and/or
``ZSTAGGER_API_KEYS_FILE``, one per line, ``#`` comments). With no key configured every API
call is refused, unless ``ZSTAGGER_API_ALLOW_ANONYMOUS`` says the service runs open on
purpose. ``zstagger api-key`` makes a key and prints its hash.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigurationError
from ..settings import Settings
from .errors import ApiError

_HASH = re.compile(r"^(sha256:)?([0-9a-fA-F]{64})$")


def new_key() -> str:
    return "zst_" + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def _parse_hash(value: str, where: str) -> str:
    match = _HASH.match(value.strip())
    if not match:
        raise ConfigurationError(f"{where}: {value.strip()[:12]}... is not a key hash (expected sha256:<64 hex digits>; "
                                 "`zstagger api-key` prints one)")
    return match.group(2).lower()


@dataclass(frozen=True)
class ApiKeys:
    digests: tuple[str, ...]
    anonymous: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        digests = [_parse_hash(value, "ZSTAGGER_API_KEYS") for value in settings.api_keys]
        if settings.api_keys_file:
            path = Path(settings.api_keys_file)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigurationError(f"ZSTAGGER_API_KEYS_FILE={path}: {exc.strerror}") from None
            for number, line in enumerate(text.splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if line:
                    digests.append(_parse_hash(line, f"{path}:{number}"))
        return cls(tuple(digests), settings.api_allow_anonymous)

    @property
    def configured(self) -> bool:
        return bool(self.digests)

    def check(self, authorization: str | None) -> None:
        """Raise a 401 ApiError unless the header carries a configured key (or the service runs open)."""
        if self.anonymous and not self.digests:
            return
        if not self.digests:
            raise ApiError(401, "unauthorized",
                           "no API keys are configured: set ZSTAGGER_API_KEYS (hashes from `zstagger api-key`) or "
                           "ZSTAGGER_API_KEYS_FILE, or ZSTAGGER_API_ALLOW_ANONYMOUS=1 to run without keys",
                           headers={"WWW-Authenticate": "Bearer"})
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            if self.anonymous:
                return
            raise ApiError(401, "unauthorized", "missing API key: send Authorization: Bearer <key>",
                           headers={"WWW-Authenticate": "Bearer"})
        digest = hashlib.sha256(key.strip().encode("utf-8")).hexdigest()
        if not any(hmac.compare_digest(digest, known) for known in self.digests):
            raise ApiError(401, "unauthorized", "invalid API key", headers={"WWW-Authenticate": "Bearer"})
