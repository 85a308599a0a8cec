"""What an image source is: open one reference, optionally list a prefix and say an object's version.

A source is any object with ``schemes`` and ``open``; ``list`` and ``version`` are optional.
Nothing here reads anything: :mod:`.read` calls the sources under the size cap and time
budget it owns.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Protocol, Union, runtime_checkable

if TYPE_CHECKING:
    from ..images.policy import ImagePolicy


@dataclass(frozen=True)
class ReadRequest:
    """What a source is handed for one read: the byte cap and the deadline.

    ``deadline`` is a :func:`time.monotonic` instant. A source should stop by then (pass
    :meth:`left` on as its client's timeout); :mod:`.read` stops waiting for it at the
    deadline either way.
    """

    max_bytes: int
    deadline: float
    timeout: float
    policy: ImagePolicy | None = None  # every limit of the read, for sources that hand it to zstagger's readers
    size: int | None = None  # the object's size as its listing said (a source may skip asking again)

    def left(self) -> float:
        """Seconds left before the deadline (at least a millisecond, so a client timeout is never 0)."""
        return max(0.001, self.deadline - time.monotonic())


@dataclass(frozen=True)
class ObjectInfo:
    """One object a listing found: its URL, and what identifies this version of it.

    ``version`` (an ETag, a generation or version id, with the size) changes whenever the
    object's bytes change; the image cache keys its digest by it, so an unchanged object is
    not read again.
    """

    url: str
    size: int | None = None
    version: str | None = None


class ObjectRef(str):
    """An object's URL as a listing found it: a plain ``str`` everywhere (results, queue
    messages), carrying the size and version the listing gave, so reading it needs no
    second request to learn them (and the image cache can skip it on its version alone)."""

    size: int | None
    version: str | None

    def __new__(cls, url: str, size: int | None = None, version: str | None = None) -> ObjectRef:
        ref = super().__new__(cls, url)
        ref.size, ref.version = size, version
        return ref

    @classmethod
    def of(cls, info: ObjectInfo) -> ObjectRef:
        return cls(info.url, info.size, info.version)


#: What ``open`` may return: the bytes, or a binary file object read here under the cap
#: (a file object with a ``size`` attribute is refused before any byte is read when too large).
Opened = Union[bytes, IO[bytes]]


@runtime_checkable
class ImageSource(Protocol):
    """A scheme's source: ``schemes`` it serves and ``open``; see the plugin guide.

    ``open(url, request)`` returns the object's bytes (or a binary file object). Raise
    :class:`~zstagger.errors.ImageLoadError` with a kind (``not_found``, ``not_a_file``,
    ``too_large``, ...) for this one reference's problem; anything else becomes a
    ``source_failed`` error record.
    """

    schemes: tuple[str, ...]

    def open(self, url: str, request: ReadRequest) -> Opened: ...


class ListableSource(ImageSource, Protocol):
    """A source that can also list a prefix, lazily, page by page (constant memory)."""

    def list(self, prefix: str, page_size: int, start_after: str | None = None) -> Iterator[list[ObjectInfo]]: ...
