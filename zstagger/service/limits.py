"""The request-body guard: no request body larger than ``ZSTAGGER_MAX_REQUEST_BYTES`` is read.

A pure ASGI middleware, outside every route: a ``Content-Length`` over the limit is refused
before a byte of the body is read, and a chunked body is cut off as soon as it passes the
limit, so memory per request stays bounded whatever the client sends.
"""

from __future__ import annotations

from .errors import ApiError


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large",
                    f"request body is over the {limit:,}-byte limit (ZSTAGGER_MAX_REQUEST_BYTES); "
                    "send fewer or smaller images per request, or URLs, or use /v1/jobs")


class BodyLimit:
    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.limit:
                    return await self._refuse(send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise too_large(self.limit)  # FastAPI re-raises HTTPExceptions from body parsing
            return message

        return await self.app(scope, limited_receive, send)

    async def _refuse(self, send) -> None:
        import json

        error = too_large(self.limit)
        body = json.dumps({"error": {"type": error.type, "message": error.message}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
