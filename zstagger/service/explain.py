"""``POST /v1/explain``: a label's heat map over one image, as JSON and/or an overlay PNG.

The image arrives as in ``/v1/tag`` (an http(s) URL, a data: URL or base64; never a server
path). The windows it is cut into count against the server's in-flight image limit like
any other images, and the work runs off the event loop.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Annotated, Literal, Union

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.responses import JSONResponse, Response

from ..errors import ImageLoadError
from ..explain import DEFAULT_GRID, MAX_GRID, MIN_GRID, explain_image, overlay_png
from ..engine.heatmap import window_cells
from .batching import Overloaded
from .errors import ApiError
from ..images import split_text
from .requests import ImageObject, describe_validation, image_from_json, openapi_body, taxonomy_for
from .routes import needs, service

Text = Annotated[str, StringConstraints(max_length=1024)]


class ExplainRequest(BaseModel):
    """``POST /v1/explain``: one image, a taxonomy (or ad-hoc labels) and optionally the label."""

    model_config = ConfigDict(extra="forbid")

    image: Union[str, ImageObject] = Field(description="http(s) URL, data: URL, or {url | base64, name}.")
    taxonomy: Text | None = None
    labels: list[Annotated[str, StringConstraints(max_length=512)]] | None = Field(None, max_length=1000)
    template: Annotated[str, StringConstraints(max_length=512)] | None = None
    label: Text | None = Field(None, description="The label to explain (default: the first tag, else the best-scoring label).")
    grid: int = Field(DEFAULT_GRID, ge=MIN_GRID, le=MAX_GRID, description="Cells per side of the heat map.")
    sparse: bool = Field(False, description="Fewer windows (5 instead of 9 at grid 4): about half the time, a coarser map.")
    format: Literal["json", "png", "both"] = Field(
        "json", description="json: the heat map; png: the overlay image; both: the heat map with the overlay as base64 PNG.")


explain_api = APIRouter(prefix="/v1", dependencies=[Depends(needs("tag", "review"))],
                        responses={401: {"description": "Missing or invalid API key"}})


@explain_api.post("/explain", openapi_extra=openapi_body(ExplainRequest),
                  responses={200: {"content": {"image/png": {}}, "description": "The heat map (JSON) or the overlay (PNG)"}})
async def explain(request: Request) -> Response:
    """Which regions of an image drive a label: every window of a grid scored as an image of its own."""
    state = service(request)
    try:
        body = ExplainRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", describe_validation(exc)) from None
    spec = taxonomy_for(body.taxonomy, body.labels, body.template, state.settings.max_request_labels)
    if body.label is not None and body.label not in spec.labels_by_name:
        raise ApiError(400, "invalid_request", f"taxonomy {spec.name!r} has no label {body.label!r}")
    ref, _ = split_text(image_from_json(body.image, 0, state.settings))  # where in the image: its text plays no part
    tagger = state.ready_tagger()
    cost = 1 + len(window_cells(body.grid, sparse=body.sparse))  # windows and the whole image
    batcher = state.batcher
    try:
        batcher.admit(cost)  # type: ignore[union-attr]
    except Overloaded:
        raise ApiError(503, "overloaded", "the server is busy; retry shortly", headers={"Retry-After": "1"}) from None
    try:
        heatmap, picture = await asyncio.to_thread(explain_image, tagger, ref, spec, body.label, body.grid, body.sparse)
        png = await asyncio.to_thread(overlay_png, heatmap, picture) if body.format != "json" else None
    except ImageLoadError as exc:
        raise ApiError(422, exc.kind, f"the image could not be read: {exc.message}") from None
    finally:
        batcher.release(cost)  # type: ignore[union-attr]
    if body.format == "png":
        return Response(png, media_type="image/png")
    data = heatmap.to_dict()
    if png is not None:
        data["overlay_png"] = base64.b64encode(png).decode("ascii")
    return JSONResponse(data)
