"""Image references: what an input can be, how it is named in results, directory expansion.

An input may bring text with its image (:class:`ImageWithText`: a product title or
description), which taxonomies with a ``text_fusion`` score beside the image;
:func:`check_text` is the one rule for how long that untrusted text may be.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from PIL import Image

from ..errors import InputTextError


@dataclass(frozen=True)
class NamedBytes:
    """Encoded image bytes that keep a name (an uploaded file's path) for results."""

    name: str
    data: bytes


@dataclass(frozen=True)
class ImageWithText:
    """An image and the text that comes with it (a product's title / description). Named in
    results as its image is; the text is checked (:func:`check_text`) when it is tagged."""

    image: str | os.PathLike | bytes | bytearray | memoryview | Image.Image | NamedBytes
    text: str


ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, NamedBytes, ImageWithText]

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


def check_text(text: object, max_chars: int) -> str:
    """An input's text, if it may be used: a string of at most ``max_chars`` characters
    (``ZSTAGGER_MAX_TEXT_CHARS``); else an :class:`~zstagger.errors.InputTextError` saying why,
    which becomes that input's error record."""
    if not isinstance(text, str):
        raise InputTextError("invalid_text", f"an input's text must be a string, not {type(text).__name__}")
    if len(text) > max_chars:
        raise InputTextError("text_too_long", f"the input's text is {len(text):,} characters, over the limit of "
                             f"{max_chars:,} (ZSTAGGER_MAX_TEXT_CHARS); send a shorter title or description")
    return text


#: JSON Lines of items (``zstagger tag items.jsonl``): each line ``{"image": REF, "text": TEXT}``.
ITEM_LIST_SUFFIXES = (".jsonl", ".ndjson")
#: Longest line of an item list, in bytes (a text over ZSTAGGER_MAX_TEXT_CHARS but within it
#: is that item's error record; a longer line stops the command before anything is read).
MAX_ITEM_LINE_BYTES = 1024 * 1024


def item_from_json(value: object, where: str) -> ImageInput:
    """One item of an item list: ``{"image": "path or URL", "text": "title / description"}``
    (``text`` optional, or null) -> the image reference, with its text when it has one. Raises
    ValueError naming ``where`` for anything else; the text's length is checked when it is tagged."""
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object like {{\"image\": \"photo.jpg\", \"text\": \"...\"}}, "
                         f"got {type(value).__name__}")
    unknown = sorted(set(value) - {"image", "text"})
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r} (an item has image and, optionally, text)")
    image, text = value.get("image"), value.get("text")
    if not isinstance(image, str) or not image.strip():
        raise ValueError(f"{where}: \"image\" must be a non-empty path or URL")
    if text is not None and not isinstance(text, str):
        raise ValueError(f"{where}: \"text\" must be a string (or null), not {type(text).__name__}")
    return ImageWithText(image, text) if text is not None else image


def split_text(ref: ImageInput) -> tuple[ImageInput, str | None]:
    """(the image reference, its text or None)."""
    return (ref.image, ref.text) if isinstance(ref, ImageWithText) else (ref, None)


def describe(ref: ImageInput) -> str:
    """The string that identifies an input in results: its path or URL, or a content hash."""
    if isinstance(ref, ImageWithText):
        return describe(ref.image)
    if isinstance(ref, NamedBytes):
        return ref.name
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return "bytes:sha256:" + hashlib.sha256(ref).hexdigest()[:16]
    if isinstance(ref, Image.Image):
        return "pil:" + hashlib.sha256(ref.tobytes()).hexdigest()[:16]
    return os.fspath(ref)


def iter_inputs(images: ImageInput | Iterable[ImageInput]) -> Iterator[ImageInput]:
    """One reference or many, with directories expanded (see :func:`expand_inputs`)."""
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image, NamedBytes, ImageWithText)):
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
