"""HTTP bodies in, image references and a taxonomy out: JSON (URLs, base64) or multipart uploads.

The server never reads a path named by a client: an image is an upload, base64 bytes, an
``http(s)`` URL (fetched under the same policy as everywhere else) or a ``data:`` URL. A large
JSON body is parsed and decoded in a helper process (:mod:`.bodies`).
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request

from ..errors import SourceRefusedError, ZstaggerError
from ..images import ImageInput, ImageWithText, NamedBytes, is_url
from ..registry import resolve_each, resolve_taxonomy
from ..sources import check_reference, is_source_url, source_for
from ..sources.access import scheme_of
from ..settings import Settings
from ..taxonomy import Taxonomy
from .bodies import BodyParser
from .errors import ApiError, api_error

Name = Annotated[str, StringConstraints(max_length=1024)]
MAX_URL_LENGTH = 8192
MAX_TAXONOMIES = 16  # taxonomies one request may name (each is compiled, and scored for every image)


class ImageObject(BaseModel):
    """One image in a JSON body: exactly one of ``url`` or ``base64``."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, description="http(s) URL, or a data: URL with base64 bytes.")
    base64: str | None = Field(None, description="The encoded image file, base64.")
    name: Name | None = Field(None, description="Name reported as `image` in the result (default: the URL, or a content hash).")
    text: str | None = Field(None, description="The product's title / description, fused with the image by taxonomies with a "
                             "text_fusion setting (longer than ZSTAGGER_MAX_TEXT_CHARS: an error record for this image).")


class TagRequest(BaseModel):
    """``POST /v1/tag`` as JSON. Images are URLs (strings) or objects."""

    model_config = ConfigDict(extra="forbid")

    images: list[Union[str, ImageObject]] = Field(
        description="http(s) URLs, data: URLs, or {url | base64, name} objects.")
    taxonomy: Name | None = Field(None, description="A registered taxonomy (GET /v1/taxonomies).")
    taxonomies: list[Name] | None = Field(
        None, min_length=1, max_length=MAX_TAXONOMIES,
        description="Several registered taxonomies in one pass: each image read and encoded once; each result is "
        '{"image", "taxonomies": {name: result}}.')
    labels: list[Annotated[str, StringConstraints(max_length=512)]] | None = Field(
        None, max_length=10_000, description="Ad-hoc labels, like the Hugging Face pipeline's candidate_labels.")
    template: Annotated[str, StringConstraints(max_length=512)] | None = Field(
        None, description='Template for labels, with {} for the label. Default: "This is a photo of {}."')
    top_k: int | None = Field(None, ge=1, le=100_000, description="Report only the K best scores per image.")
    frames: bool = Field(False, description="Add each sampled frame's scores to animation and video results.")


def decode_data_url(url: str, max_bytes: int) -> bytes:
    header, _, payload = url.partition(",")
    if not header.lower().startswith("data:") or ";base64" not in header.lower():
        raise ApiError(400, "invalid_request", "data: URLs must be base64 (data:image/png;base64,...)")
    return decode_base64(payload, max_bytes)


def decode_base64(payload: str, max_bytes: int) -> bytes:
    if len(payload) > (max_bytes + 2) // 3 * 4 + 4:
        raise ApiError(413, "payload_too_large",
                       f"an image is over the {max_bytes:,}-byte limit (ZSTAGGER_MAX_IMAGE_BYTES)")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_request", "image bytes are not valid base64") from None


def image_from_json(value: str | ImageObject, index: int, settings: Settings) -> ImageInput:
    if isinstance(value, ImageObject) and value.text is not None:  # checked when it is tagged: an error record if too long
        return ImageWithText(image_from_json(value.model_copy(update={"text": None}), index, settings), value.text)
    if isinstance(value, str):
        value = ImageObject(url=value)
    if (value.url is None) == (value.base64 is None):
        raise ApiError(400, "invalid_request", f"images[{index}]: give exactly one of url or base64")
    if value.base64 is not None:
        data = decode_base64(value.base64, settings.max_image_bytes)
        return NamedBytes(value.name, data) if value.name else data
    url = value.url or ""
    if url[:5].lower() == "data:":
        data = decode_data_url(url, settings.max_image_bytes)
        return NamedBytes(value.name, data) if value.name else data
    if is_source_url(url):  # s3://, gs://, a plugin's scheme: only where the server's allow-list says
        try:
            check_reference(url, settings.source_allow, trusted=False)
            source_for(scheme_of(url))
        except SourceRefusedError as exc:
            raise ApiError(400, "invalid_request", f"images[{index}]: {exc}") from None
    elif not is_url(url):
        raise ApiError(400, "invalid_request",
                       f"images[{index}]: {url[:80]!r} is not an http(s), data: or allowed object-store URL "
                       "(the server reads no local paths)")
    if len(url) > MAX_URL_LENGTH:
        raise ApiError(400, "invalid_request", f"images[{index}]: URL longer than {MAX_URL_LENGTH} characters")
    return url


def taxonomies_for(taxonomy: str | None, taxonomies: list[str] | None, labels: list[str] | None, template: str | None,
                   max_labels: int) -> Taxonomy | list[Taxonomy]:
    """:func:`taxonomy_for`, or the list of several taxonomies (``taxonomies``, alone) as an HTTP error."""
    if taxonomies is None:
        return taxonomy_for(taxonomy, labels, template, max_labels)
    if taxonomy is not None or labels is not None or template is not None:
        raise ApiError(400, "invalid_request", "give taxonomies alone, not with taxonomy, labels or template")
    if len(taxonomies) > MAX_TAXONOMIES:
        raise ApiError(400, "invalid_request", f"{len(taxonomies)} taxonomies, over the limit of {MAX_TAXONOMIES}")
    try:
        return resolve_each(taxonomies)
    except ZstaggerError as exc:
        raise api_error(exc) from None


def taxonomy_for(taxonomy: str | None, labels: list[str] | None, template: str | None, max_labels: int) -> Taxonomy:
    """The one owner of "exactly one of taxonomy or labels", and of how many ad-hoc labels a
    request may bring (each new label set is encoded by the model), as an HTTP error."""
    if labels is not None and len(labels) > max_labels:
        raise ApiError(413, "payload_too_large",
                       f"{len(labels)} labels in one request, over the limit of {max_labels} (ZSTAGGER_MAX_REQUEST_LABELS); "
                       "send fewer labels, or register a taxonomy for a large label set")
    try:
        return resolve_taxonomy(taxonomy, labels, template)
    except ZstaggerError as exc:  # unknown taxonomy: 404; a bad spec or option: 400 (the table of errors)
        raise api_error(exc) from None


def check_count(count: int, limit: int) -> None:
    if count == 0:
        raise ApiError(400, "invalid_request", "no images in the request")
    if count > limit:
        raise ApiError(413, "payload_too_large",
                       f"{count} images in one request, over the limit of {limit} (ZSTAGGER_MAX_REQUEST_IMAGES); "
                       "split the request, or submit a job to /v1/jobs")


async def read_tag_request(request: Request, settings: Settings,
                           parse: BodyParser) -> tuple[list[ImageInput], Taxonomy | list[Taxonomy], int | None, bool]:
    """(image references, taxonomy, top_k, frames) from a JSON or multipart ``/v1/tag`` body (a
    large JSON body parsed by ``parse``'s helper process)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _read_multipart(request, settings)
    if content_type not in ("application/json", ""):
        raise ApiError(415, "unsupported_media_type",
                       f"send application/json or multipart/form-data, not {content_type}")
    body = await request.body()
    return await parse(len(body), tag_request_from_json, body, settings)


def tag_request_from_json(body: bytes, settings: Settings) -> tuple[list[ImageInput], Taxonomy | list[Taxonomy], int | None, bool]:
    parsed = parse_json(TagRequest, body)
    check_count(len(parsed.images), settings.max_request_images)
    spec = taxonomies_for(parsed.taxonomy, parsed.taxonomies, parsed.labels, parsed.template, settings.max_request_labels)
    refs = [image_from_json(value, i, settings) for i, value in enumerate(parsed.images)]
    return refs, spec, parsed.top_k, parsed.frames


M = TypeVar("M", bound=BaseModel)


def parse_json(model: type[M], body: bytes) -> M:
    """A JSON body validated as ``model``; invalid is a 422 saying where."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", describe_validation(exc)) from None


async def _read_multipart(request: Request, settings: Settings) -> tuple[list[ImageInput], Taxonomy | list[Taxonomy], int | None, bool]:
    try:
        # (a text field per image at most, beside the few others)
        form = await request.form(max_files=settings.max_request_images, max_fields=64 + settings.max_request_images,
                                  max_part_size=64 * 1024)
    except (ApiError, ClientDisconnect):
        raise
    except Exception as exc:  # python-multipart / Starlette: malformed, or over max_files
        raise ApiError(400, "invalid_request", f"could not read the multipart body: {exc}") from None
    try:
        uploads = [value for key, value in form.multi_items() if isinstance(value, UploadFile)]
        fields: dict[str, list[str]] = {}
        texts = _texts_of_uploads(form.multi_items())
        for key, value in form.multi_items():
            if isinstance(value, str) and key != "text":
                fields.setdefault(key, []).append(value)
        unknown = set(fields) - {"taxonomy", "taxonomies", "labels", "template", "top_k", "frames"}
        if unknown:
            raise ApiError(400, "invalid_request", f"unknown form fields: {', '.join(sorted(unknown))}")
        check_count(len(uploads), settings.max_request_images)
        labels = [label for value in fields.get("labels", []) for label in value.split(",")] or None
        top_k = _one_int(fields.get("top_k"), "top_k")
        frames = (_one(fields.get("frames"), "frames") or "false").lower() in ("1", "true", "yes")
        several = [name.strip() for value in fields.get("taxonomies", []) for name in value.split(",") if name.strip()] or None
        spec = taxonomies_for(_one(fields.get("taxonomy"), "taxonomy"), several, labels,
                              _one(fields.get("template"), "template"), settings.max_request_labels)
        refs: list[ImageInput] = []
        for i, upload in enumerate(uploads):
            data = await upload.read(settings.max_image_bytes + 1)
            if len(data) > settings.max_image_bytes:
                raise ApiError(413, "payload_too_large", f"upload {upload.filename or i!r} is over the "
                               f"{settings.max_image_bytes:,}-byte limit (ZSTAGGER_MAX_IMAGE_BYTES)")
            image = NamedBytes(upload.filename or f"upload-{i}", data)
            # (a text over ZSTAGGER_MAX_TEXT_CHARS becomes that image's error record when it is tagged)
            refs.append(ImageWithText(image, texts[i]) if texts.get(i) is not None else image)
        return refs, spec, top_k, frames
    finally:
        await form.close()


def _texts_of_uploads(items: list[tuple[str, Any]]) -> dict[int, str]:
    """A ``text`` field is the text of the file sent just before it (a product title, say):
    upload number -> text. A text before any file, or a second one after the same file, is refused."""
    texts: dict[int, str] = {}
    uploads = -1
    for key, value in items:
        if isinstance(value, UploadFile):
            uploads += 1
        elif key == "text":
            if uploads < 0:
                raise ApiError(400, "invalid_request", "a text field comes after the file it describes; this one comes first")
            if uploads in texts:
                raise ApiError(400, "invalid_request", f"file {uploads} has two text fields; send one after each file")
            texts[uploads] = value
    return texts


def _one(values: list[str] | None, name: str) -> str | None:
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(400, "invalid_request", f"form field {name} given {len(values)} times")
    return values[0]


def _one_int(values: list[str] | None, name: str) -> int | None:
    value = _one(values, name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise ApiError(400, "invalid_request", f"{name} must be a whole number, not {value[:20]!r}") from None
    if number < 1:
        raise ApiError(400, "invalid_request", f"{name} must be at least 1")
    return number


def describe_validation(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors()[:5]:
        where = ".".join(str(part) for part in err.get("loc", ()))
        problems.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(problems)


def openapi_body(model: type[BaseModel], multipart: dict[str, Any] | None = None) -> dict[str, Any]:
    """The requestBody of an endpoint that reads its body itself (JSON, optionally multipart)."""
    content: dict[str, Any] = {"application/json": {"schema": model.model_json_schema(ref_template="#/components/schemas/{model}")}}
    if multipart:
        content["multipart/form-data"] = {"schema": multipart}
    return {"requestBody": {"required": True, "content": content}}
