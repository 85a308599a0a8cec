"""What travels inside task messages: image references, and the one task's arguments.

The producer encodes (:func:`encode_ref`); the worker checks everything it receives
(:meth:`ChunkRequest.from_message`) before acting on it, because anyone who can write to
Redis can put a well-formed task message with ill-formed arguments on a queue.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Annotated, Any, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, ValidationError, model_validator

from ..errors import ConfigurationError, ImageLoadError, MalformedChunkError, ZstaggerError
from ..images import ImageInput, ImageWithText, NamedBytes, check_text, is_url
from ..sources import check_reference, is_source_url, source_for
from ..sources.access import scheme_of
from .jobstore import check_job_id


#: Most time ranges one video is cut into (a bound on what one message can make a worker do).
MAX_RANGES = 1000


def check_ref_string(ref: str) -> str:
    """The rule for a path or URL reference, on the producer and in the worker alike."""
    if not ref.strip() or any(c in ref for c in "\0\n\r"):
        raise ConfigurationError(f"malformed image reference {ref!r}")
    if "://" in ref[:16] and not is_url(ref):
        if not is_source_url(ref):  # file:// and the like
            raise ConfigurationError(f"unsupported URL scheme in {ref!r}: give a path, or a URL some source reads")
        try:
            check_reference(ref, ())  # no credentials, no chaining; the allow-list is the reader's
            source_for(scheme_of(ref))
        except ZstaggerError as exc:
            raise ConfigurationError(f"unsupported URL scheme in {ref!r}: {exc}") from None
        return ref
    if is_url(ref):
        from urllib.parse import urlsplit

        try:
            host = urlsplit(ref).hostname
        except ValueError as exc:
            raise ConfigurationError(f"malformed URL {ref!r}: {exc}") from None
        if not host:
            raise ConfigurationError(f"malformed URL {ref!r}: no host")
    return ref


def encode_item(index: int, ref: ImageInput, max_bytes: int, max_text_chars: int) -> list[Any]:
    """One input as it travels: ``[index, reference]``, or ``[index, reference, text]`` for an
    input with text (:class:`~zstagger.images.ImageWithText`, checked here: the producer refuses
    an over-long text before anything is written, as it does an oversized upload)."""
    if isinstance(ref, ImageWithText):
        try:
            text = check_text(ref.text, max_text_chars)
        except ImageLoadError as exc:
            raise ConfigurationError(f"input {index}: {exc}") from None
        return [index, encode_ref(ref.image, max_bytes), text]
    return [index, encode_ref(ref, max_bytes)]


def decode_item(ref: str | dict[str, Any], text: str | None) -> ImageInput:
    """What :func:`encode_item` sent, as the tagger takes it."""
    image = decode_ref(ref)
    return ImageWithText(image, text) if text is not None else image


def encode_ref(ref: ImageInput, max_bytes: int) -> str | dict[str, Any]:
    """A JSON-safe form of one reference; bytes are base64 and capped at ``max_bytes``.

    Paths are made absolute here, on the producer: a worker runs in another directory
    (and maybe on another machine with the same shared storage), so a relative path
    would name another file, or none.
    """
    if isinstance(ref, NamedBytes):
        return {**encode_ref(ref.data, max_bytes), "name": ref.name}
    if isinstance(ref, (bytes, bytearray, memoryview)):
        data = bytes(ref)
        if len(data) > max_bytes:
            raise ConfigurationError(
                f"an image sent as bytes is {len(data):,} bytes, over the {max_bytes:,}-byte limit "
                "(ZSTAGGER_MAX_UPLOAD_BYTES); send a URL or a shared path instead"
            )
        return {"b64": base64.b64encode(data).decode("ascii")}
    if isinstance(ref, os.PathLike):
        ref = os.fspath(ref)
    if not isinstance(ref, str):
        raise ConfigurationError(f"cannot enqueue {type(ref).__name__}: give paths, URLs or bytes")
    check_ref_string(ref)
    return ref if is_url(ref) or is_source_url(ref) else os.path.abspath(ref)


def decode_ref(value: str | dict[str, Any]) -> ImageInput:
    if isinstance(value, dict):
        data = base64.b64decode(value["b64"])
        return NamedBytes(value["name"], data) if value.get("name") else data
    return value


# -- the task's arguments, as the worker receives them -------------------------------------


def _strict_base64(value: str) -> str:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not base64: {exc}") from None
    return value


def _reference(value: str) -> str:
    try:
        return check_ref_string(value)
    except ConfigurationError as exc:
        raise ValueError(str(exc)) from None


_Int = Annotated[int, Strict()]  # "0", 0.0 and true are not indices
_Str = Annotated[str, Strict()]


class _EncodedBytes(BaseModel):
    model_config = ConfigDict(extra="forbid")
    b64: Annotated[_Str, AfterValidator(_strict_base64)]
    name: _Str | None = None


_Index = Annotated[_Int, Field(ge=0)]
_Ref = Union[Annotated[_Str, AfterValidator(_reference)], _EncodedBytes]
#: A text longer than this is not even read (the producer sends at most ZSTAGGER_MAX_TEXT_CHARS,
#: whose own check makes a text over it that input's error record).
MAX_WIRE_TEXT = 1_000_000


class ListingPage(BaseModel):
    """A chunk that is one page of a listing: the worker lists it again (``count`` objects
    under ``prefix`` after ``after``, up to ``last``) and tags them as inputs ``first`` on.
    What travels is the page's bounds, never its keys: a huge prefix never sits in Redis."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefix: Annotated[_Str, AfterValidator(_reference)]
    first: Annotated[_Int, Field(ge=0)]
    count: Annotated[_Int, Field(ge=1, le=1024)]
    after: Annotated[_Str, AfterValidator(_reference)] | None = None
    last: Annotated[_Str, AfterValidator(_reference)]

    @model_validator(mode="after")
    def _bounds_under_prefix(self) -> ListingPage:
        for bound in (self.after, self.last):
            if bound is not None and not bound.startswith(self.prefix):
                raise ValueError(f"{bound!r} is not under the listing's prefix {self.prefix!r}")
        return self

    @property
    def indices(self) -> range:
        return range(self.first, self.first + self.count)


class ChunkRequest(BaseModel):
    """``tag_chunk(job_id, items, taxonomy, top_k=, expires_at=, attempt=)``, checked.

    ``items``: ``[index, reference]`` or ``[index, reference, text]`` (an input with text);
    ``taxonomy``: one spec, or a list of specs (several taxonomies in one pass).
    Scalars are strict (``"0"`` and ``true`` are not indices); whether each index is one
    of the job's inputs needs the job's size: :meth:`check_indices`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: Annotated[_Str, AfterValidator(check_job_id)]
    items: list[Union[tuple[_Index, _Ref], tuple[_Index, _Ref, Annotated[_Str, Field(max_length=MAX_WIRE_TEXT)]]]] = []
    listing: ListingPage | None = None
    taxonomy: Union[dict[str, Any], Annotated[list[dict[str, Any]], Field(min_length=1, max_length=64)]]
    top_k: Annotated[_Int, Field(ge=1)] | None = None
    expires_at: Annotated[float, Strict(), Field(ge=0)] = 0
    attempt: Annotated[_Int, Field(ge=0)] = 0
    #: The first and last input of the chunk this one came from (a retry, a hand-back): what
    #: the job's result sink files it under. None: the chunk as enqueued (its own inputs).
    origin: tuple[_Index, _Index] | None = None

    @model_validator(mode="after")
    def _items_or_listing(self) -> ChunkRequest:
        if bool(self.items) == (self.listing is not None):
            raise ValueError("a chunk has either items or a listing page" if self.items
                             else "items: List should have at least 1 item after validation, not 0")
        _check_origin(self.origin)
        if self.origin is not None and not all(self.origin[0] <= i <= self.origin[1] for i in self.indices):
            raise ValueError(f"origin {list(self.origin)} does not hold the chunk's inputs")
        return self

    @classmethod
    def from_message(cls, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ChunkRequest:
        if len(args) != 3:
            raise MalformedChunkError(f"expected 3 arguments (job id, items, taxonomy), got {len(args)}")
        try:
            return cls(job_id=args[0], items=args[1], taxonomy=args[2], **kwargs)
        except (ValidationError, ZstaggerError, TypeError) as exc:
            raise MalformedChunkError(_one_line(exc)) from None

    @property
    def size(self) -> int:
        """How many inputs the chunk holds (a listing page's count)."""
        return self.listing.count if self.listing is not None else len(self.items)

    def check_indices(self, total: int) -> None:
        indices = self.indices
        if max(indices) >= total or (self.origin is not None and self.origin[1] >= total):
            raise MalformedChunkError(f"index {max(indices)} is not an input of job {self.job_id} (it has {total})")
        if len(set(indices)) != len(indices):
            raise MalformedChunkError("an index appears twice in one chunk")

    @property
    def indices(self) -> list[int]:
        return list(self.listing.indices) if self.listing is not None else [item[0] for item in self.items]

    @property
    def sink_origin(self) -> tuple[int, int]:
        """The chunk its results are filed under in the job's sink (see :mod:`.sinking`)."""
        return self.origin if self.origin is not None else (min(self.indices), max(self.indices))

    def wire_items(self) -> list[list[Any]]:
        """The items as they travel (for sending some of them round again)."""
        return [[item[0], item[1] if isinstance(item[1], str) else item[1].model_dump(exclude_none=True), *item[2:]]
                for item in self.items]

    @property
    def specs(self) -> list[dict[str, Any]]:
        """The taxonomy specs: one, or several for one pass."""
        return self.taxonomy if isinstance(self.taxonomy, list) else [self.taxonomy]


class RangeRequest(BaseModel):
    """``tag_range(job_id, index, ref, taxonomy, start=, end=, part=, parts=, top_k=, expires_at=)``,
    checked: one time range of a long video, input ``index`` of the job (see :mod:`.tasks`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: Annotated[_Str, AfterValidator(check_job_id)]
    index: Annotated[_Int, Field(ge=0)]
    ref: Annotated[_Str, AfterValidator(_reference)] | _EncodedBytes
    taxonomy: dict[str, Any]
    start: Annotated[float, Strict(), Field(ge=0)]
    end: Annotated[float, Strict(), Field(gt=0)] | None = None
    part: Annotated[_Int, Field(ge=0)]
    parts: Annotated[_Int, Field(ge=1, le=MAX_RANGES)]
    top_k: Annotated[_Int, Field(ge=1)] | None = None
    expires_at: Annotated[float, Strict(), Field(ge=0)] = 0
    origin: tuple[_Index, _Index] | None = None  # the chunk the video came in (ChunkRequest.origin)

    @classmethod
    def from_message(cls, args: tuple[Any, ...], kwargs: dict[str, Any]) -> RangeRequest:
        if len(args) != 4:
            raise MalformedChunkError(f"expected 4 arguments (job id, index, reference, taxonomy), got {len(args)}")
        try:
            request = cls(job_id=args[0], index=args[1], ref=args[2], taxonomy=args[3], **kwargs)
        except (ValidationError, ZstaggerError, TypeError) as exc:
            raise MalformedChunkError(_one_line(exc)) from None
        if request.part >= request.parts or (request.end is not None and request.end <= request.start):
            raise MalformedChunkError(f"range {request.part} of {request.parts} ({request.start}-{request.end} s) is not a range")
        try:
            _check_origin(request.origin, request.index)
        except ValueError as exc:
            raise MalformedChunkError(str(exc)) from None
        return request

    @property
    def sink_origin(self) -> tuple[int, int]:
        return self.origin if self.origin is not None else (self.index, self.index)

    def wire_ref(self) -> str | dict[str, Any]:
        return self.ref if isinstance(self.ref, str) else self.ref.model_dump(exclude_none=True)


#: The most inputs one chunk's origin may span (a forged one must not make a sink read a whole job).
MAX_ORIGIN_SPAN = 100_000


def _check_origin(origin: tuple[int, int] | None, index: int | None = None) -> None:
    if origin is not None and origin[1] - origin[0] >= MAX_ORIGIN_SPAN:
        raise ValueError(f"origin {list(origin)} spans more than {MAX_ORIGIN_SPAN:,} inputs")
    if origin is not None and (origin[1] < origin[0] or (index is not None and not origin[0] <= index <= origin[1])):
        raise ValueError(f"origin {list(origin)} is not a chunk's first and last input"
                         + (f" around input {index}" if index is not None else ""))


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if isinstance(part, int) or str(part).isidentifier())
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        return f"{where}: {first['msg']}{more}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
