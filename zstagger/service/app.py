"""The FastAPI application: ``create_app(settings)``; ``zstagger serve`` runs it under uvicorn.

The model loads in the background when the server starts (``/healthz`` answers at once,
``/readyz`` once it is loaded). Every error answer has the body
``{"error": {"type", "message"}}``; nothing unexpected leaks a stack trace.
"""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..settings import Settings
from ..errors import ZstaggerError
from .errors import client_left, http_error, unexpected_error, validation_error, zstagger_error
from .limits import BodyLimit
from .logs import limit_repeats
from .metrics import RequestMetrics
from .moderation import ModerationRequest
from .requests import TagRequest
from .jobs import JobRequest, jobs
from .explain import ExplainRequest, explain_api
from .review import DecideRequest, ItemRequest, review_api
from .review_page import review_page
from .routes import api, probes
from .state import ServiceState


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    limit_repeats()  # a flood of one warning or traceback is written a few times a minute, not each time
    state = ServiceState(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start_loading()
        try:
            yield
        finally:
            state.close()

    app = FastAPI(
        title="zstagger",
        version=__version__,
        description="Zero-shot image tagging and moderation with CLIP-family models. "
        "Authenticate with `Authorization: Bearer <key>`.",
        lifespan=lifespan,
    )
    app.state.zstagger = state
    app.include_router(api)
    app.include_router(jobs)
    app.include_router(explain_api)
    app.include_router(review_api)
    app.include_router(review_page)
    app.include_router(probes)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ZstaggerError, zstagger_error)
    app.add_exception_handler(ClientDisconnect, client_left)
    app.add_exception_handler(Exception, unexpected_error)
    # Outermost last: metrics see every answer, the body limit guards every route.
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    app.add_middleware(RequestMetrics, metrics=state.metrics)
    _document_bodies(app, [TagRequest, ModerationRequest, JobRequest, ExplainRequest, DecideRequest, ItemRequest])
    return app


def _document_bodies(app: FastAPI, models: list) -> None:
    """Endpoints that read their own bodies declare them with $refs: add those schemas to the spec."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            full = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in full.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components.setdefault(model.__name__, full)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
