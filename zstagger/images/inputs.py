"""Image references: what an input can be, how it is named in results, directory expansion."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from PIL import Image


@dataclass(frozen=True)
class NamedBytes:
    """Encoded image bytes that keep a name (an uploaded file's path) for results."""

    name: str
    data: bytes


ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, NamedBytes]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff",
     ".ppm", ".pgm", ".pbm", ".pnm", ".ico", ".tga", ".jp2", ".j2k", ".avif", ".heic", ".heif", ".apng"}
)
#: Video files a directory is searched for too (what a file is, is read from its bytes, not its name).
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".qt", ".webm", ".mkv", ".avi", ".3gp", ".3g2", ".ts", ".mts", ".m2ts", ".flv", ".ogv", ".mpg", ".mpeg"}
)


_DISCOVERED = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS


def is_url(ref: object) -> bool:
    return isinstance(ref, str) and ref[:8].lower().startswith(("http://", "https://"))


def describe(ref: ImageInput) -> str:
    """The string that identifies an input in results: its path or URL, or a content hash."""
    if isinstance(ref, NamedBytes):
        return ref.name
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return "bytes:sha256:" + hashlib.sha256(ref).hexdigest()[:16]
    if isinstance(ref, Image.Image):
        return "pil:" + hashlib.sha256(ref.tobytes()).hexdigest()[:16]
    return os.fspath(ref)


def iter_inputs(images: ImageInput | Iterable[ImageInput]) -> Iterator[ImageInput]:
    """One reference or many, with directories expanded (see :func:`expand_inputs`)."""
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image, NamedBytes)):
        images = [images]
    return expand_inputs(images)


def expand_inputs(inputs: Iterable[ImageInput]) -> Iterator[ImageInput]:
    """Yield image references, replacing each directory by its image and video files (recursive, sorted).

    Anything that is not a directory is passed through unchanged; a path that does not
    exist fails later, as an error record for that one input.
    """
    for ref in inputs:
        if isinstance(ref, (str, os.PathLike)) and not is_url(ref) and os.path.isdir(ref):
            yield from _image_files(Path(ref))
        else:
            yield ref


def _image_files(root: Path) -> Iterator[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in _DISCOVERED:
                found.append(os.path.join(dirpath, name))
    yield from sorted(found)
