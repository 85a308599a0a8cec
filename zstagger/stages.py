"""Stages that wrap the embedder's for one stream (:class:`zstagger.pipeline.Stages`), each
for one reason: :class:`StopReading` reads no further input once told to stop (a worker's
scale-in), :class:`MediaAside` sets animations and videos aside to be judged over their frames,
:class:`Numbered` gives each input its place so the embedding store records a stream in input
order, :class:`TextAside` lets an image's text (a product title) travel beside it, checked. The
Tagger stacks the ones a call needs. Imports nothing above the embedder and pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .embedder import EmbedStages, Prepared, or_error
from .errors import ImageLoadError
from .images import ImageInput, ImageWithText, NamedBytes, check_text, describe
from .media import MediaSource, detect
from .pipeline import SetAside
from .sources import is_source_url, read_bytes

#: The error kind of an image not read because the caller said stop (``interrupted``).
INTERRUPTED = "interrupted"


class StopReading:
    """Stages that read no further image once ``interrupted()`` says stop: each image not yet
    being read becomes an ``interrupted`` error record (a queue worker told to stop hands
    those back to the queue)."""

    def __init__(self, stages: EmbedStages, interrupted: Callable[[], bool]):
        self._stages, self._interrupted = stages, interrupted

    def prepare(self, ref: ImageInput) -> Prepared | ImageLoadError:
        if self._interrupted():
            return ImageLoadError(INTERRUPTED, "not read: tagging was interrupted", transient=True)
        return self._stages.prepare(ref)

    def embed(self, ready: Sequence[Prepared]) -> np.ndarray:
        return self._stages.embed(ready)


class MediaAside:
    """Stages that set animations and videos aside for the caller, who judges them over their
    frames (:mod:`zstagger.media`); stills go on through the embedder's stages as before."""

    def __init__(self, stages: EmbedStages):
        self._stages = stages

    def prepare(self, ref: ImageInput) -> Prepared | ImageLoadError | SetAside:
        if is_source_url(ref):
            return self._prepare_object(ref)  # type: ignore[arg-type]
        found = or_error(detect, ref, self._stages.embedder.image_policy)
        if isinstance(found, ImageLoadError):
            return found
        if isinstance(found, MediaSource):
            return SetAside(found)
        # A still whose bytes were read to sniff them (a URL) is not fetched again.
        prepared = self._stages.prepare(ref if found is None else found)
        if found is not None and isinstance(prepared, Prepared) and self._stages.route.records:
            prepared.name = describe(ref)
        return prepared

    def _prepare_object(self, url: str) -> Prepared | ImageLoadError | SetAside:
        """An object in a store: its cached embedding if its version was hashed before (not
        read at all), else its bytes, read once, sniffed, and embedded or set aside."""
        embedder, route = self._stages.embedder, self._stages.route
        version, hit = embedder.version_hit(url, route)
        if hit is not None:
            if route.records:
                hit.name = url
            return hit
        data = or_error(read_bytes, url, embedder.image_policy)
        if isinstance(data, ImageLoadError):
            return data
        named = NamedBytes(url, data)
        found = or_error(detect, named, embedder.image_policy)
        if isinstance(found, ImageLoadError):
            return found
        if isinstance(found, MediaSource):
            return SetAside(found)
        prepared = embedder.prepare(named, route, version)
        if isinstance(prepared, Prepared) and route.records:
            prepared.name = url
        return prepared

    def embed(self, ready: Sequence[Prepared]) -> np.ndarray:
        return self._stages.embed(ready)


class TextAside:
    """Stages over inputs that may bring text (:class:`~zstagger.images.ImageWithText`): the
    text is checked (a text over ``max_chars`` is that input's error record, its image not
    read) and the image goes on alone; the text stays with the input for scoring."""

    def __init__(self, stages: Any, max_chars: int):
        self._stages, self._max_chars = stages, max_chars

    def __getattr__(self, name: str) -> Any:  # route, embedder: the wrapped stages'
        return getattr(self._stages, name)

    def prepare(self, ref: ImageInput) -> Any:
        if isinstance(ref, ImageWithText):
            try:
                check_text(ref.text, self._max_chars)
            except ImageLoadError as exc:
                return exc
            ref = ref.image
        return self._stages.prepare(ref)

    def embed(self, ready: Sequence[Prepared]) -> np.ndarray:
        return self._stages.embed(ready)


class Numbered:
    """Stages over ``(place, ref)`` pairs: each prepared image carries its place in the stream,
    so the embedding store can record the stream's images in input order."""

    def __init__(self, stages: Any):
        self._stages = stages

    def prepare(self, item: tuple[int, ImageInput]) -> Any:
        place, ref = item
        prepared = self._stages.prepare(ref)
        if isinstance(prepared, (Prepared, SetAside)):
            prepared.order = place
        return prepared

    def embed(self, ready: Sequence[Prepared]) -> np.ndarray:
        return self._stages.embed(ready)
