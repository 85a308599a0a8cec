"""Error bodies of the HTTP API: every error is ``{"error": {"type", "message"}}`` with a stable type.

zstagger's own errors are answered as the one table of errors says
(:data:`zstagger.errors.ERRORS`: status and type per error type, :func:`api_error`); no
stack trace ever reaches a client: anything unexpected is logged here and answered as
``internal_error``.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import ZstaggerError, http_answer

log = logging.getLogger("zstagger.service")

# Stable error types by HTTP status, for errors raised without one of our own.
_TYPES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          406: "not_acceptable", 413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_request",
          429: "rate_limited", 503: "unavailable"}


class ApiError(HTTPException):
    """An error answered to the client as is: a status, a stable ``type`` and a message.

    It subclasses Starlette's HTTPException so that FastAPI re-raises it from body parsing
    instead of turning it into a generic 400.
    """

    def __init__(self, status: int, type: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(status_code=status, detail=message, headers=headers)
        self.type = type
        self.message = message


def error_response(status: int, type: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": type, "message": message}}, status_code=status, headers=headers)


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    if isinstance(exc, ApiError):
        return error_response(exc.status_code, exc.type, exc.message, exc.headers)
    message = exc.detail if isinstance(exc.detail, str) else "request refused"
    return error_response(exc.status_code, _TYPES.get(exc.status_code, "error"), message, getattr(exc, "headers", None))


async def validation_error(request: Request, exc) -> JSONResponse:
    problems = []
    for err in exc.errors()[:5]:
        where = ".".join(str(part) for part in err.get("loc", ()) if part != "body")
        problems.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return error_response(422, "invalid_request", "; ".join(problems) or "invalid request")


def api_error(exc: ZstaggerError) -> ApiError:
    """zstagger's own error as the HTTP API answers it: status and type from the table of
    errors, the message (written for users) on one line."""
    status, type = http_answer(exc)
    return ApiError(status, type, str(exc).replace("\n", "; "))


async def zstagger_error(request: Request, exc: ZstaggerError) -> JSONResponse:
    """zstagger's own errors raised inside a route, answered as :func:`api_error` says."""
    error = api_error(exc)
    return error_response(error.status_code, error.type, error.message)


#: nginx's status for "client closed request": what metrics count for a client that left mid-request.
CLIENT_CLOSED_REQUEST = 499


async def client_left(request: Request, exc: Exception) -> Response:
    """The client closed its connection before its request was read: one line, no traceback, no 500."""
    client = request.client.host if request.client else "?"
    # uvicorn's logger, so that --log-level decides (info: shown; warning: not).
    logging.getLogger("uvicorn.error").info("zstagger: client %s left before its %s %s was read", client,
                                            request.method, request.url.path)
    return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it; the metrics count it


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("zstagger: unexpected error answering %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "the server met an unexpected error; it is logged on the server")
