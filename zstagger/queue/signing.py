"""Webhook signatures, where they have always been imported from: they live in
:mod:`zstagger.net.signing` (beside the client that sends the requests they sign), so that a
result sink below the queue signs its deliveries the same way."""

from ..errors import InvalidSignatureError  # noqa: F401
from ..net.signing import (  # noqa: F401
    DEFAULT_TOLERANCE, EVENT_ID_HEADER, SCHEME, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, signed_headers, verify,
    verify_webhook,
)
