"""The OpenAI-moderation-compatible shape: ``POST /v1/moderations`` for image inputs.

Request: ``{"model": ..., "input": [{"type": "image_url", "image_url": {"url": ...}}, ...]}``
(http(s) or data: URLs). Following OpenAI, one multi-modal input list is one input and gets
one result; its scores are the highest over the list's images. Text inputs are refused with
a clear error rather than silently left unchecked: zstagger moderates images.

Response: ``{"id", "model", "results": [{"flagged", "categories", "category_scores",
"category_applied_input_types"}]}``. Every OpenAI category is present; a taxonomy label that
declares ``openai_categories`` reports under those names (the highest score wins when
several labels map to one category); a label without a mapping appears under its own name.
``flagged`` is true when the verdict is not ``allow`` (taxonomies with actions) or, for
taxonomies without actions, when any label fired. ``model`` names the taxonomy used.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..images import ImageInput
from ..results import TagResult
from ..settings import Settings
from ..taxonomy import ACTION_SEVERITY, Taxonomy
from .errors import ApiError
from .requests import image_from_json

# Every category of OpenAI's moderation response, and the input types OpenAI scores it on.
OPENAI_CATEGORIES: dict[str, tuple[str, ...]] = {
    "harassment": ("text",), "harassment/threatening": ("text",), "hate": ("text",), "hate/threatening": ("text",),
    "illicit": ("text",), "illicit/violent": ("text",), "self-harm": ("text", "image"),
    "self-harm/instructions": ("text", "image"), "self-harm/intent": ("text", "image"), "sexual": ("text", "image"),
    "sexual/minors": ("text",), "violence": ("text", "image"), "violence/graphic": ("text", "image"),
}
OPENAI_DEFAULT_MODELS = {"omni-moderation-latest", "omni-moderation-2024-09-26", "text-moderation-latest",
                         "text-moderation-stable"}


class ImageUrl(BaseModel):
    url: Annotated[str, StringConstraints(max_length=70_000_000)]


class ImageUrlInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["image_url"]
    image_url: ImageUrl


class TextInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ModerationRequest(BaseModel):
    """OpenAI's moderation request. ``model``: a zstagger taxonomy, or an OpenAI model name (-> moderation)."""

    model_config = ConfigDict(extra="ignore")

    input: Union[str, list[str], list[Union[ImageUrlInput, TextInput]]]
    model: Annotated[str, StringConstraints(max_length=256)] | None = None


def taxonomy_name(request: ModerationRequest) -> str:
    model = request.model
    return "moderation" if not model or model in OPENAI_DEFAULT_MODELS else model


def images_of(request: ModerationRequest, settings: Settings) -> list[ImageInput]:
    inputs = request.input
    if isinstance(inputs, str) or any(isinstance(item, (str, TextInput)) for item in inputs):
        raise ApiError(400, "unsupported_input",
                       "text inputs are not supported: zstagger moderates images; send "
                       '[{"type": "image_url", "image_url": {"url": ...}}]')
    if not inputs:
        raise ApiError(400, "invalid_request", "input is empty")
    return [image_from_json(item.image_url.url, i, settings) for i, item in enumerate(inputs)]  # type: ignore[union-attr]


def moderation_result(taxonomy: Taxonomy, results: list[TagResult]) -> dict[str, Any]:
    """One OpenAI moderation result for the images of one input list."""
    failed = [r for r in results if r.error is not None]
    if failed:
        first = failed[0]
        raise ApiError(422, "invalid_image", f"image {first.image!r} could not be checked: "
                       f"{first.error.type}: {first.error.message}")  # type: ignore[union-attr]
    scores: dict[str, float] = {name: 0.0 for name in OPENAI_CATEGORIES}
    fired: dict[str, bool] = {name: False for name in OPENAI_CATEGORIES}
    applied: dict[str, list[str]] = {name: [] for name in OPENAI_CATEGORIES}
    mapped = {label.name: (label.openai_categories or [label.name]) for label in taxonomy.labels if not label.background}
    for result in results:
        tags = set(result.tags)
        for score in result.scores:
            for category in mapped.get(score.label, ()):
                scores[category] = max(scores.get(category, 0.0), score.score)
                fired[category] = fired.get(category, False) or score.label in tags
                if category not in applied or not applied[category]:
                    applied[category] = ["image"]
    if taxonomy.has_actions:
        flagged = any(ACTION_SEVERITY[r.verdict or "allow"] > 0 for r in results)
    else:
        flagged = any(r.tags for r in results)
    return {
        "flagged": flagged,
        "categories": fired,
        "category_scores": scores,
        "category_applied_input_types": applied,
        "zstagger": {"taxonomy": taxonomy.name, "verdicts": [r.verdict for r in results],
                     "tags": [r.tags for r in results]},
    }


def moderation_response(taxonomy: Taxonomy, results: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": f"modr-{uuid.uuid4().hex}", "model": taxonomy.name, "results": results}


class ModerationResult(BaseModel):
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[str]]
    zstagger: dict[str, Any] = Field(description="zstagger's own detail: taxonomy, verdict and tags per image.")


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]
