"""The review queue over HTTP: ``/v1/review`` (next, decide, skip, undo, stats, an item's image and heat map).

Every route needs an API key with the ``review`` scope; the key's name is who decisions are
recorded as. The queue lives in the embedding store's database (``ZSTAGGER_STORE``); without
one these routes answer 503. Bodies are small JSON objects, validated and bounded; an item's
image is read from its reference (put there by ``zstagger review enqueue``, never named by a
caller) under the server's image policy, and served as JPEG, PNG, GIF or WebP (anything else
is re-encoded as PNG) with ``nosniff``.
"""

from __future__ import annotations

import asyncio
import io
import threading
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.responses import JSONResponse, Response

from ..errors import ImageLoadError
from ..registry import resolve_taxonomy
from ..review import DEFAULT_LEASE, ReviewError, ReviewItem, ReviewQueue
from .auth import KeyInfo
from .errors import ApiError
from .requests import describe_validation
from .routes import needs, service

Label = Annotated[str, StringConstraints(max_length=512)]
_STATUS = {"not_found": 404, "not_claimed": 409, "already_decided": 409, "nothing_to_undo": 409, "invalid_decision": 422,
           "invalid_reviewer": 422}
_SERVED = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}
_lock = threading.Lock()


class DecideRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item: int = Field(ge=1)
    action: Literal["accept", "reject", "relabel"]
    labels: list[Label] | None = Field(None, max_length=100, description="relabel: the labels that are true.")


class ItemRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item: int = Field(ge=1)


review_api = APIRouter(prefix="/v1/review", tags=["review"], responses={401: {"description": "Missing or invalid API key"},
                                                                         403: {"description": "The key lacks the review scope"}})
Reviewer = Annotated[KeyInfo, Depends(needs("review"))]


def review_queue(request: Request) -> ReviewQueue:
    """The process's review queue, opened on first use from ZSTAGGER_STORE."""
    app_state = request.app.state
    with _lock:
        queue = getattr(app_state, "review_queue", None)
        if queue is None:
            settings = service(request).settings
            if not settings.store:
                raise ApiError(503, "review_unavailable", "the review queue needs ZSTAGGER_STORE (the embedding store's "
                               "database) to be set on the server")
            from ..store import open_store

            queue = app_state.review_queue = ReviewQueue(open_store(settings.store, timeout=settings.store_timeout))
    return queue


async def _call(function, *args):
    try:
        return await asyncio.to_thread(function, *args)
    except ReviewError as exc:
        raise ApiError(_STATUS.get(exc.kind, 400), exc.kind, exc.message) from None


async def _body(request: Request, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", describe_validation(exc)) from None


def item_view(item: ReviewItem) -> dict[str, Any]:
    """What the page shows of an item: the verdict, the label in question, the decision trail, and
    whether to blur it (a block-level label fired or is in question)."""
    try:
        taxonomy = resolve_taxonomy(item.taxonomy)
        block = {label.name for label in taxonomy.labels if label.action == "block"}
    except Exception:  # a taxonomy no longer registered: blur to be safe
        block = set(item.choices)
    return {
        "id": item.id, "image": item.reference, "taxonomy": item.taxonomy, "taxonomy_version": item.taxonomy_version,
        "label": item.label, "score": item.score, "verdict": item.verdict, "tags": item.tags, "choices": item.choices,
        "stratum": item.stratum, "probability": item.probability, "claim_expires": item.claim_expires,
        "explanation": item.result.get("explanation"), "scores": item.result.get("scores", [])[:10],
        "blur": bool(block & ({item.label} | set(item.tags))),
        "image_url": f"/v1/review/items/{item.id}/image", "heatmap_url": f"/v1/review/items/{item.id}/heatmap",
    }


@review_api.get("/next")
async def next_item(request: Request, who: Reviewer, taxonomy: Annotated[str | None, Query(max_length=200)] = None) -> JSONResponse:
    """Claim the next item for this reviewer (held for 5 minutes); ``{"item": null}`` when none is left."""
    item = await _call(review_queue(request).claim, who.name, DEFAULT_LEASE, taxonomy)
    return JSONResponse({"item": item_view(item) if item is not None else None})


@review_api.post("/decide")
async def decide(request: Request, who: Reviewer) -> JSONResponse:
    """Decide an item this reviewer holds: accept, reject, or relabel with the true labels."""
    body = await _body(request, DecideRequest)
    decision = await _call(review_queue(request).decide, body.item, who.name, body.action, body.labels)
    return JSONResponse({"decision": decision.to_dict()})


@review_api.post("/skip")
async def skip(request: Request, who: Reviewer) -> JSONResponse:
    """Give a held item back; it comes again after the others."""
    body = await _body(request, ItemRequest)
    await _call(review_queue(request).skip, body.item, who.name)
    return JSONResponse({"skipped": body.item})


@review_api.post("/undo")
async def undo(request: Request, who: Reviewer) -> JSONResponse:
    """Take back this reviewer's latest decision; its item is held by them again."""
    decision, item = await _call(review_queue(request).undo, who.name)
    return JSONResponse({"decision": decision.to_dict(), "item": item_view(item)})


@review_api.get("/stats")
async def stats(request: Request, who: Reviewer) -> JSONResponse:
    """Pending and decided items per stratum, agreement with the model, each reviewer's decisions and pace."""
    return JSONResponse(await _call(review_queue(request).stats))


@review_api.get("/items/{item_id}/image", response_class=Response)
async def item_image(request: Request, item_id: int, who: Reviewer) -> Response:
    """The item's image."""
    item = await _call(review_queue(request).item, item_id)
    data, media_type = await asyncio.to_thread(_image_bytes, item.reference, service(request).settings)
    return Response(data, media_type=media_type, headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=300"})


@review_api.get("/items/{item_id}/heatmap")
async def item_heatmap(request: Request, item_id: int, who: Reviewer) -> JSONResponse:
    """Where in the image the item's label comes from (see POST /v1/explain; sparse windows, so that
    it opens in about a second on a CPU)."""
    from ..explain import explain_image

    item = await _call(review_queue(request).item, item_id)
    state = service(request)
    tagger = state.ready_tagger()
    try:
        taxonomy = resolve_taxonomy(item.taxonomy)
        heatmap, _ = await asyncio.to_thread(explain_image, tagger, item.reference, taxonomy, item.label, sparse=True)
    except ImageLoadError as exc:
        raise ApiError(422, exc.kind, f"the image could not be read: {exc.message}") from None
    return JSONResponse(heatmap.to_dict())


def _image_bytes(reference: str, settings) -> tuple[bytes, str]:
    from PIL import Image

    from ..images import ImagePolicy, open_image
    from ..sources import read_bytes

    policy = ImagePolicy.from_settings(settings)
    try:
        data = read_bytes(reference, policy)
        with Image.open(io.BytesIO(data)) as probe:
            kind = probe.format
        if kind in _SERVED:
            return data, _SERVED[kind]
        with open_image(data, policy) as picture:
            out = io.BytesIO()
            picture.save(out, format="PNG")
            return out.getvalue(), "image/png"
    except ImageLoadError as exc:
        raise ApiError(422, exc.kind, f"the image could not be read: {exc.message}") from None
    except Exception as exc:
        raise ApiError(422, "invalid_image", f"the image could not be read: {type(exc).__name__}") from None
