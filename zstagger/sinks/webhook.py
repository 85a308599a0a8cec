"""The webhook as a result sink: each finished chunk POSTed as a signed ``job.chunk`` event.

``--sink https://example.com/hook`` sends, per chunk, ``{"id": "evt_<job>_chunk_<first>-<last>",
"type": "job.chunk", "job_id", "chunk", "results": [...]}``, signed exactly as the job's
done/cancelled webhooks are (:mod:`zstagger.net.signing`, ``ZSTAGGER_WEBHOOK_SECRET``), through
the hardened client (:func:`zstagger.net.http_post`: deadline, address policy). The event id is
stable across deliveries of the same chunk: receivers de-duplicate on it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from ..errors import SinkError
from ..hookspecs import hookimpl
from ..net import FetchPolicy, http_post
from ..net.signing import signed_headers
from ..settings import Settings


class WebhookSink:
    schemes = ("http", "https")

    def write(self, url: str, job_id: str, chunk: str, lines: Sequence[str]) -> None:
        settings = Settings()
        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
        if not secret:
            raise SinkError("ZSTAGGER_WEBHOOK_SECRET is not set on this worker: chunk events cannot be signed")
        event_id = f"evt_{job_id}_chunk_{chunk}"
        head = json.dumps({"id": event_id, "type": "job.chunk", "job_id": job_id, "chunk": chunk}, separators=(",", ":"))
        body = (head[:-1] + ',"results":[' + ",".join(lines) + "]}").encode()
        headers = {"Content-Type": "application/json", **signed_headers(secret, event_id, body)}
        policy = FetchPolicy(timeout=settings.webhook_timeout, allow_private_urls=settings.allow_private_urls)
        status, reason = http_post(url, body, headers, policy)
        if not 200 <= status < 300:
            raise SinkError(f"HTTP {status} {reason} from {url}")


@hookimpl
def register_result_sinks(register) -> None:
    register(WebhookSink())
