"""Which inputs are animations or videos: the loader's question, answered from the bytes.

:func:`detect` takes an image reference as the loader has it and returns a
:class:`MediaSource` for an animation or a video, or says it is a still: None (read the
reference as before) or the bytes already read for it (a URL is fetched once). A local
video file is not read into memory: PyAV streams it from the path. Animations and videos
given as bytes or URLs obey the same byte limit as images (``ZSTAGGER_MAX_IMAGE_BYTES``).
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass

from PIL import Image

from ..errors import FileReadError, ImageLoadError
from ..files import read_regular_file
from ..images.inputs import ImageInput, NamedBytes, is_url
from ..images.load import read_image_bytes
from ..images.policy import ImagePolicy
from .sniff import NEED_MORE, MediaKind, sniff

_HEAD = 64 * 1024


@dataclass(frozen=True)
class MediaSource:
    """An animation or video on its way to being judged: its bytes, or a local file's path."""

    kind: MediaKind
    data: bytes | None = None
    path: str | None = None

    @property
    def source(self) -> bytes | str:
        return self.data if self.data is not None else self.path  # type: ignore[return-value]


def detect(ref: ImageInput, policy: ImagePolicy) -> MediaSource | bytes | None:
    """A :class:`MediaSource`, the bytes of a still already read, or None (a still not read yet)."""
    if isinstance(ref, Image.Image):
        return None  # a picture in memory is judged as it is (its current frame)
    if isinstance(ref, (NamedBytes, bytes, bytearray, memoryview)) or is_url(ref):
        data = read_image_bytes(ref, policy)
        kind = sniff(data)
        return MediaSource(kind, data=data) if kind in ("animation", "video") else (None if not is_url(ref) else data)
    path = os.fspath(ref)
    head = _head(path)
    if head is None:
        return None  # missing, not a regular file, unreadable: reading it as an image says why
    kind = sniff(head, complete=False)
    if kind == "video":
        return MediaSource("video", path=path)
    if kind == NEED_MORE:
        data = _read(path, policy)
        kind = sniff(data)
        return MediaSource(kind, data=data) if kind == "animation" else data
    if kind == "animation":
        return MediaSource("animation", data=_read(path, policy))
    return None


def _head(path: str) -> bytes | None:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # before open(): opening some devices has effects
            return None
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped after the stat
            return None
        return os.read(fd, _HEAD)
    except OSError:
        return None
    finally:
        os.close(fd)


def _read(path: str, policy: ImagePolicy) -> bytes:
    try:
        return read_regular_file(path, policy.max_bytes, "ZSTAGGER_MAX_IMAGE_BYTES")
    except FileReadError as exc:
        raise ImageLoadError(exc.kind, exc.message) from None


def media_digest(source: MediaSource) -> str:
    """The SHA-256 of the media's bytes (a local video file is read through in 1 MiB pieces):
    what keys the frames the embedding store keeps of it."""
    if source.data is not None:
        return hashlib.sha256(source.data).hexdigest()
    digest = hashlib.sha256()
    try:
        with open(source.path, "rb") as f:  # type: ignore[arg-type]
            while piece := f.read(1 << 20):
                digest.update(piece)
    except OSError as exc:
        raise ImageLoadError("unreadable", f"could not read {source.path}: {exc.strerror or exc}") from None
    return digest.hexdigest()
