"""API keys: ``Authorization: Bearer <key>``, checked against configured SHA-256 hashes.

Keys are never stored, only their hashes (``ZSTAGGER_API_KEYS``, comma-separated, and/or
``ZSTAGGER_API_KEYS_FILE``, one per line, ``#`` comments). With no key configured every API
call is refused, unless ``ZSTAGGER_API_ALLOW_ANONYMOUS`` says the service runs open on
purpose. ``zstagger api-key`` makes a key and prints its hash.

Names and scopes: a line of the key file may name its key and list what it may do,
``sha256:<hex> name=ann scopes=review,tag``. Scopes: ``tag`` (tagging, moderation,
taxonomies, explain), ``jobs`` (the queue), ``review`` (the review queue and its page's
data and images), ``admin``. A key without ``scopes=`` keeps what every key could do before
scopes existed (``tag`` and ``jobs``); a key without ``name=`` is named after its hash. The
name is who a review decision is recorded as. Anonymous service: every scope, as "anonymous".
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigurationError
from ..settings import Settings
from .errors import ApiError

_HASH = re.compile(r"^(sha256:)?([0-9a-fA-F]{64})$")
SCOPES = ("tag", "jobs", "review", "admin")
UNSCOPED = frozenset({"tag", "jobs"})  # what a key could do before scopes existed
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclass(frozen=True)
class KeyInfo:
    """Who is calling: the key's name and its scopes."""

    name: str
    scopes: frozenset[str]


ANONYMOUS = KeyInfo("anonymous", frozenset(SCOPES))


def _parse_line(line: str, where: str) -> tuple[str, KeyInfo]:
    """``hash [name=NAME] [scopes=a,b]`` -> (digest, who)."""
    first, *attributes = line.split()
    digest = _parse_hash(first, where)
    name, scopes = f"key-{digest[:8]}", UNSCOPED
    for attribute in attributes:
        key, _, value = attribute.partition("=")
        if key == "name" and _NAME.match(value):
            name = value
        elif key == "scopes" and value and set(value.split(",")) <= set(SCOPES):
            scopes = frozenset(value.split(","))
        else:
            raise ConfigurationError(f"{where}: {attribute[:40]!r} is not name=NAME (letters, digits, _.@-) or scopes=LIST "
                                     f"(of {', '.join(SCOPES)})")
    return digest, KeyInfo(name, scopes)


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
    who: dict[str, KeyInfo] = field(default_factory=dict, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        who = dict(_parse_line(value, "ZSTAGGER_API_KEYS") for value in settings.api_keys if value.strip())
        digests = list(who)
        if settings.api_keys_file:
            path = Path(settings.api_keys_file)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigurationError(f"ZSTAGGER_API_KEYS_FILE={path}: {exc.strerror}") from None
            for number, line in enumerate(text.splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if line:
                    digest, info = _parse_line(line, f"{path}:{number}")
                    digests.append(digest)
                    who[digest] = info
        return cls(tuple(digests), settings.api_allow_anonymous, who)

    @property
    def configured(self) -> bool:
        return bool(self.digests)

    def check(self, authorization: str | None, *scopes: str) -> KeyInfo:
        """Who is calling: raise a 401 ApiError unless the header carries a configured key (or the
        service runs open), a 403 unless the key has one of ``scopes`` (when given)."""
        who = self._caller(authorization)
        if scopes and not who.scopes & set(scopes):
            raise ApiError(403, "forbidden", f"the API key {who.name!r} lacks the {' or '.join(scopes)} scope "
                           "(scopes=... in ZSTAGGER_API_KEYS_FILE)")
        return who

    def _caller(self, authorization: str | None) -> KeyInfo:
        if self.anonymous and not self.digests:
            return ANONYMOUS
        if not self.digests:
            raise ApiError(401, "unauthorized",
                           "no API keys are configured: set ZSTAGGER_API_KEYS (hashes from `zstagger api-key`) or "
                           "ZSTAGGER_API_KEYS_FILE, or ZSTAGGER_API_ALLOW_ANONYMOUS=1 to run without keys",
                           headers={"WWW-Authenticate": "Bearer"})
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            if self.anonymous:
                return ANONYMOUS
            raise ApiError(401, "unauthorized", "missing API key: send Authorization: Bearer <key>",
                           headers={"WWW-Authenticate": "Bearer"})
        digest = hashlib.sha256(key.strip().encode("utf-8")).hexdigest()
        found = None
        for known in self.digests:  # every one compared, in constant time each
            if hmac.compare_digest(digest, known):
                found = known
        if found is None:
            raise ApiError(401, "unauthorized", "invalid API key", headers={"WWW-Authenticate": "Bearer"})
        return self.who.get(found, KeyInfo(f"key-{found[:8]}", UNSCOPED))
