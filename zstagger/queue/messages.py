"""What travels inside task messages: image references, and the one task's arguments.

The producer encodes (:func:`encode_ref`); the worker checks everything it receives
(:meth:`ChunkRequest.from_message`) before acting on it, because anyone who can write to
Redis can put a well-formed task message with ill-formed arguments on a queue.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, ValidationError, model_validator

from ..errors import ConfigurationError, MalformedChunkError, ZstaggerError
from ..images import ImageInput, NamedBytes, is_url
from ..sources import check_reference, is_source_url, source_for
from ..sources.access import scheme_of
from .jobstore import check_job_id


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

    Scalars are strict (``"0"`` and ``true`` are not indices); whether each index is one
    of the job's inputs needs the job's size: :meth:`check_indices`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: Annotated[_Str, AfterValidator(check_job_id)]
    items: list[tuple[Annotated[_Int, Field(ge=0)], Annotated[_Str, AfterValidator(_reference)] | _EncodedBytes]]
    listing: ListingPage | None = None
    taxonomy: dict[str, Any]
    top_k: Annotated[_Int, Field(ge=1)] | None = None
    expires_at: Annotated[float, Strict(), Field(ge=0)] = 0
    attempt: Annotated[_Int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _items_or_listing(self) -> ChunkRequest:
        if bool(self.items) == (self.listing is not None):
            raise ValueError("a chunk has either items or a listing page" if self.items
                             else "items: List should have at least 1 item after validation, not 0")
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
        indices = list(self.listing.indices) if self.listing is not None else [index for index, _ in self.items]
        if max(indices) >= total:
            raise MalformedChunkError(f"index {max(indices)} is not an input of job {self.job_id} (it has {total})")
        if len(set(indices)) != len(indices):
            raise MalformedChunkError("an index appears twice in one chunk")

    def wire_items(self) -> list[list[Any]]:
        """The items as they travel (for sending some of them round again)."""
        return [[index, ref if isinstance(ref, str) else ref.model_dump(exclude_none=True)] for index, ref in self.items]


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if isinstance(part, int) or str(part).isidentifier())
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        return f"{where}: {first['msg']}{more}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
