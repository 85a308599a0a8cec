"""Webhook signatures: HMAC-SHA256 over the event id, the timestamp and the exact body bytes.

Every event carries three headers::

    Zstagger-Event-Id:  evt_<job id>_<done|cancelled>   (stable across retries: de-duplicate on it)
    Zstagger-Timestamp: <unix seconds when this attempt was signed>
    Zstagger-Signature: v2=<hex HMAC-SHA256(secret, "<event id>.<timestamp>." + body)>

The event id is signed with the body (as Standard Webhooks sign ``msg_id.timestamp.body``):
a captured delivery replayed under another id header fails the check, so de-duplicating on
the id a verified request carries is safe. A receiver recomputes the HMAC over the id, the
timestamp and the raw body it received, compares in constant time, and refuses timestamps
more than a few minutes away (a replayed old event). Receivers in Python call
:func:`verify`; it needs nothing but the standard library (producer installs without torch
have it). Small on purpose: review it alone.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping

from ..errors import InvalidSignatureError

EVENT_ID_HEADER = "Zstagger-Event-Id"
TIMESTAMP_HEADER = "Zstagger-Timestamp"
SIGNATURE_HEADER = "Zstagger-Signature"
DEFAULT_TOLERANCE = 300  # seconds
SCHEME = "v2"  # v1 signed "<timestamp>." + body, leaving the event id outside the signature
# Event ids are ASCII words (evt_<job id>_<state>): no "." that could shift the signed message's fields.
_EVENT_ID = re.compile(r"[A-Za-z0-9_\-]{1,200}")


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def sign(secret: str | bytes, event_id: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for one delivery: ``v2=<hex>``."""
    message = f"{event_id}.{timestamp}.".encode() + body
    return f"{SCHEME}={hmac.new(_key(secret), message, hashlib.sha256).hexdigest()}"


def signed_headers(secret: str | bytes, event_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    if not _EVENT_ID.fullmatch(event_id):
        raise ValueError(f"not an event id: {event_id!r}")
    timestamp = int(time.time() if now is None else now)
    return {EVENT_ID_HEADER: event_id, TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(secret, event_id, timestamp, body)}


def verify(
    secret: str | bytes, headers: Mapping[str, str], body: bytes, tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> str:
    """Check a received event; returns its event id, or raises :class:`InvalidSignatureError`.

    ``headers``: the request's headers (any mapping; names are matched case-insensitively);
    ``body``: the raw request body, exactly as received (not re-serialised JSON). The id
    returned is the one the signature covers: an id header changed on the way is refused.
    """
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    event_id = lowered.get(EVENT_ID_HEADER.lower())
    stamp = lowered.get(TIMESTAMP_HEADER.lower())
    signatures = lowered.get(SIGNATURE_HEADER.lower())
    if not event_id or not stamp or not signatures:
        raise InvalidSignatureError(f"missing {EVENT_ID_HEADER}, {TIMESTAMP_HEADER} or {SIGNATURE_HEADER} header")
    if not _EVENT_ID.fullmatch(event_id):
        raise InvalidSignatureError(f"{EVENT_ID_HEADER} is not an event id")
    if not (stamp.isascii() and stamp.isdigit()):
        raise InvalidSignatureError(f"{TIMESTAMP_HEADER} is not a whole number of seconds")
    timestamp = int(stamp)
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        raise InvalidSignatureError(f"timestamp is more than {tolerance:g}s away from now (a replayed or delayed event)")
    expected = sign(secret, event_id, timestamp, body)
    # Several signatures (comma-separated) let a receiver accept events during a secret rotation.
    if not any(hmac.compare_digest(expected, candidate.strip()) for candidate in signatures.split(",")):
        raise InvalidSignatureError("signature does not match: wrong secret, or the body or event id was changed")
    return event_id


verify_webhook = verify  # the name the package root exports
