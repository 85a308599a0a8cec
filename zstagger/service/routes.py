"""The synchronous endpoints: tagging, moderation, taxonomies, health, readiness, metrics."""

from __future__ import annotations

from typing import Any, Union

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response

from ..registry import get_taxonomy, registered_taxonomies
from ..results import MultiTagResult, TagResult
from .errors import ApiError
from .moderation import ModerationRequest, ModerationResponse, images_of, moderation_response, moderation_result, taxonomy_name
from .requests import TagRequest, check_count, openapi_body, parse_json, read_tag_request, taxonomy_for
from .state import ServiceState

MULTIPART_TAG = {
    "type": "object",
    "properties": {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "Image files."},
        "text": {"type": "string", "description": "The text of the file sent just before this field (a product title, "
                 "say), fused with its image as the taxonomy's text_fusion says; at most one after each file."},
        "taxonomy": {"type": "string"},
        "taxonomies": {"type": "string", "description": "Comma-separated taxonomies, for several in one pass."},
        "labels": {"type": "string", "description": "Comma-separated ad-hoc labels."},
        "template": {"type": "string"},
        "top_k": {"type": "integer", "minimum": 1},
        "frames": {"type": "boolean", "description": "Each sampled frame's scores in animation and video results."},
    },
    "required": ["images"],
}


def service(request: Request) -> ServiceState:
    return request.app.state.zstagger


def authorized(request: Request) -> ServiceState:
    state = service(request)
    state.keys.check(request.headers.get("authorization"), "tag")
    return state


def needs(*scopes: str):
    """A dependency: the caller's key must have one of ``scopes``; gives who it is (see auth.py)."""

    def check(request: Request):
        return service(request).keys.check(request.headers.get("authorization"), *scopes)

    return check


class TagResponse(BaseModel):
    results: list[Union[TagResult, MultiTagResult]]


class TaxonomySummary(BaseModel):
    name: str
    mode: str
    labels: int
    version: str
    fingerprint: str
    plugin: str
    description: str


api = APIRouter(prefix="/v1", dependencies=[Depends(authorized)],
                responses={401: {"description": "Missing or invalid API key"}})
probes = APIRouter()


@api.post("/tag", response_model=TagResponse, openapi_extra=openapi_body(TagRequest, MULTIPART_TAG),
          responses={413: {"description": "Too many or too large images"}, 503: {"description": "Busy or loading"}})
async def tag(request: Request) -> TagResponse:
    """Tag images now: one result per image, in order (the same records as `zstagger tag`).

    A bad image is an error record in its place (HTTP 200); 4xx only for a bad request.
    """
    state = service(request)
    refs, spec, top_k, frames = await read_tag_request(request, state.settings, state.bodies)
    return TagResponse(results=await state.tag(refs, spec, top_k, frames=frames))


@api.post("/moderations", response_model=ModerationResponse, openapi_extra=openapi_body(ModerationRequest))
async def moderations(request: Request) -> dict[str, Any]:
    """OpenAI's moderation endpoint for image inputs: a client written for it works here by changing its base URL."""
    state = service(request)
    raw = await request.body()
    spec, refs = await state.bodies(len(raw), moderation_request_from_json, raw, state.settings)
    results = await state.tag(refs, spec, None)
    return moderation_response(spec, [moderation_result(spec, results)])


def moderation_request_from_json(raw: bytes, settings) -> tuple[Any, list]:
    body = parse_json(ModerationRequest, raw)
    spec = taxonomy_for(taxonomy_name(body), None, None, settings.max_request_labels)
    refs = images_of(body, settings)
    check_count(len(refs), settings.max_request_images)
    return spec, refs


@api.get("/taxonomies", response_model=list[TaxonomySummary])
def list_taxonomies() -> list[dict[str, Any]]:
    """Every registered taxonomy."""
    return [
        {"name": name, "mode": entry.taxonomy.mode, "labels": len(entry.taxonomy.labels),
         "version": entry.taxonomy.version, "fingerprint": entry.taxonomy.fingerprint, "plugin": entry.origin,
         "description": entry.taxonomy.description}
        for name, entry in sorted(registered_taxonomies().items())
    ]


@api.get("/taxonomies/{name}")
def show_taxonomy(name: str) -> dict[str, Any]:
    """One taxonomy's validated spec (labels, templates, thresholds, actions)."""
    return {**get_taxonomy(name).model_dump(mode="json"), "fingerprint": get_taxonomy(name).fingerprint}


@probes.get("/healthz", tags=["operations"])
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@probes.get("/readyz", tags=["operations"], responses={503: {"description": "Not ready, and why"}})
def readyz(request: Request) -> JSONResponse:
    """Readiness: the model is loaded (and Redis answers, when async jobs are configured)."""
    state = service(request)
    if state.tagger is None:
        reason = f"model could not be loaded: {state.load_error}" if state.load_error else "model is loading"
        return JSONResponse({"error": {"type": "not_ready", "message": reason}}, status_code=503)
    jobs = "redis_url" in state.settings.model_fields_set
    if jobs:
        problem = _redis_problem(state.settings.redis_url)
        if problem:
            return JSONResponse({"error": {"type": "not_ready", "message": problem}}, status_code=503)
    encoder = state.tagger.encoder
    return JSONResponse({"status": "ready", "model": state.settings.model, "device": str(encoder.device),
                         "precision": str(encoder.dtype).removeprefix("torch."), "jobs": jobs,
                         "model_load_seconds": round(state.load_seconds or 0.0, 3)})


def _redis_problem(url: str) -> str | None:
    import redis

    from ..queue.jobstore import redis_failure

    try:
        redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping()
    except redis.RedisError as exc:
        return str(redis_failure(url, exc))
    return None


@probes.get("/metrics", tags=["operations"], response_class=Response, dependencies=[Depends(authorized)],
            responses={401: {"description": "Missing or invalid API key"}})
def metrics(request: Request) -> Response:
    """Prometheus metrics: requests, latency, batch sizes, queue wait, images. Needs an API key
    (a scraper without one: ZSTAGGER_API_METRICS_PORT serves them on a port of their own)."""
    body, content_type = service(request).metrics.exposition()
    return Response(body, media_type=content_type)
