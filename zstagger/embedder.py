"""One image to one vector: the model, ``prepare`` (read, look up, preprocess) and ``embed``
(encode, then store or record).

An :class:`Embedder` holds the model runtime (loaded at the first miss when a cache may make
it unnecessary, so a fully cached run never imports torch), its fingerprint and its lanes
(forward passes run at once). Every call says where its images are looked up and stored
with a :class:`CacheRoute`, and returns its own figures (:class:`Embedded`: hits, misses,
images left unrecorded); callers that count across calls add them up (:class:`Figures`).

Its collaborators are protocols, so any object written to them plugs in:
:class:`~zstagger.embedding_cache.ImageEmbeddingCache` (``get_many``/``put_many``),
:class:`~zstagger.embedding_cache.ImageRecorder` (also ``record``: the embedding store),
and :class:`ImageEncoder`, the model runtime (:func:`zstagger.runtimes.load_encoder`: :class:`~zstagger.engine.model.ClipEncoder`
on torch, or a built OpenVINO runtime; the Embedder is handed its loader).

The two stages the schedulers run (:mod:`zstagger.pipeline` for a stream, the HTTP
service's micro-batcher across requests) are :meth:`Embedder.prepare` (a loader thread, one
image) and :meth:`Embedder.embed` (an encoder lane, one batch), bound to one route by
:class:`EmbedStages`. Images a stream records wait in a :class:`SightingBuffer`.

Imports nothing above it: no tagger, no taxonomy, no queue.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from .embedding_cache import (
    EmbeddingKey,
    ImageEmbeddingCache,
    ImageRecorder,
    ImageSighting,
    ModelInfo,
    ModelInfoCache,
    default_image_cache,
)
from .embedding_cache.images import to_fp16
from .engine.vectors import normalize
from .errors import ImageLoadError, ZstaggerError
from .images import ImageInput, ImagePolicy, describe, is_url, open_image
from .runtimes import load_encoder, model_fingerprint
from .settings import Settings
from .sources import is_source_url, object_version, read_bytes

#: Images an embedding store is told about per write when tagging a stream (at least a
#: whole queue chunk, ZSTAGGER_CHUNK_SIZE <= 1024, so a chunk is one write).
WRITE_EVERY = 1024
#: Longest a recorded image waits for its write: a stream killed outright (SIGKILL, out of
#: memory) loses the records of at most this many seconds of images.
FLUSH_SECONDS = 5.0


@runtime_checkable
class ImageEncoder(Protocol):
    """A model runtime the embedder runs: pixels and prompts in, unit embeddings out.

    Embeddings come back as float32 rows of unit length, as anything ``np.asarray`` takes
    (a numpy array, a CPU torch tensor).
    """

    fingerprint: str  # keys cached embeddings: the checkpoint's weights, config and processor
    logit_scale: float
    logit_bias: float | None
    uses_sigmoid: bool
    device: Any  # where it runs; str() names it ("cpu", "cuda:0", ...)

    @property
    def min_decode_size(self) -> int | None:
        """The model's input side: JPEGs may be decoded down to twice it (None: decode in full)."""
        ...

    def preprocess(self, image: Image.Image, exact: bool) -> np.ndarray:
        """Model-ready pixels of one RGB picture (``exact``: as the checkpoint's processor does)."""
        ...

    def encode_images(self, pixels: np.ndarray) -> Any:
        """Unit embeddings of a stack of :meth:`preprocess` outputs, one row each."""
        ...

    def encode_text(self, prompts: Sequence[str]) -> Any:
        """Unit embeddings of prompts, one row each."""
        ...

    def plan_lanes(self, lanes: int) -> int:
        """How many batches to encode at once (``lanes``, or 0 to choose), sharing the runtime's threads among them."""
        ...


#: ``(model, device, precision) -> ImageEncoder``: how an Embedder loads its model.
EncoderLoader = Callable[[str, str, str], ImageEncoder]


@dataclass(frozen=True)
class CacheRoute:
    """Where one call's images are looked up and their new embeddings kept.

    ``cache`` None: nowhere (every image is decoded and encoded). ``records``: the cache is
    an :class:`~zstagger.embedding_cache.ImageRecorder` that is also told about every image
    seen through this route (reference, job): a tagger's embedding store, never the cache
    of a taxonomy's example images.
    """

    cache: ImageEmbeddingCache | None = None
    records: bool = False

    @classmethod
    def of(cls, cache: ImageEmbeddingCache | None) -> CacheRoute:
        """The route through ``cache``, recording when it is a recorder (an embedding store)."""
        return cls(cache, records=isinstance(cache, ImageRecorder))

    @property
    def recorder(self) -> ImageRecorder | None:
        return self.cache if self.records else None  # type: ignore[return-value]


NO_CACHE = CacheRoute()


def open_image_cache(choice: ImageEmbeddingCache | bool | None, settings: Settings,
                     connections: int = 4) -> tuple[ImageEmbeddingCache | None, bool]:
    """The image cache a tagger uses, and whether it was opened here (so is closed with it).

    ``choice``: an object (used as given), True (the SQLite cache under ``ZSTAGGER_CACHE_DIR``),
    False (none), or None: the embedding store of ``ZSTAGGER_STORE`` if set (``connections``
    pooled), else the cache if ``ZSTAGGER_IMAGE_CACHE``.
    """
    if choice is None and settings.store:
        from .store import open_store

        return open_store(settings.store, timeout=settings.store_timeout, connections=connections), True
    use = settings.image_cache if choice is None else choice
    if use is True:
        return default_image_cache(settings.cache_dir), True
    return (use or None), False  # type: ignore[return-value]


@dataclass
class Prepared:
    """One readable image on its way to an embedding: cached already, or pixels to encode
    (:meth:`Embedder.prepare`, then :meth:`Embedder.embed`)."""

    key: EmbeddingKey | None
    vector: np.ndarray | None = None
    pixels: np.ndarray | None = None
    # A local file (its stat) or an object (its version) read and hashed: for the digest index.
    hashed: tuple[str, os.stat_result | str, str] | None = None
    name: str | None = None  # the reference as results name it, when the route records images
    order: int | None = None  # the input's place in its stream, for recording a stream's images in input order


@dataclass(frozen=True)
class Embedded:
    """What one :meth:`Embedder.embed` call did: a vector per image, and its own figures."""

    vectors: np.ndarray
    hits: int = 0  # images whose embedding came from the route's cache
    misses: int = 0  # images encoded (with a cache on the route)
    unrecorded: int = 0  # images the recorder could not take (written at once, not buffered)


class Figures:
    """Running totals of the figures calls returned, for a caller that counts across calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.hits = self.misses = self.unrecorded = 0

    def add(self, hits: int = 0, misses: int = 0, unrecorded: int = 0) -> None:
        with self._lock:
            self.hits += hits
            self.misses += misses
            self.unrecorded += unrecorded


class SightingBuffer:
    """Images a stream saw, on their way to the embedding store (an ImageRecorder).

    Written in one call per :data:`WRITE_EVERY` images (a queue chunk is one write), at most
    :data:`FLUSH_SECONDS` after the oldest one waiting, and whenever :meth:`flush` is called:
    at the end of the stream and when the tagger closes (Ctrl-C and SIGTERM unwind through
    both). Timed and full writes run on a timer thread, one write at a time, so neither the
    encoder lanes nor the reader of results wait on the store.
    """

    def __init__(self, recorder: ImageRecorder, model_name: str, figures: Figures | None = None, *,
                 every: int = WRITE_EVERY, seconds: float = FLUSH_SECONDS):
        self.recorder, self.model_name, self.figures = recorder, model_name, figures
        self.every, self.seconds = every, seconds
        self._pending: list[ImageSighting] = []
        self._held: list[tuple[int, int, ImageSighting]] = []  # (place in the stream, tie, sighting): a heap
        self._tie = itertools.count()
        self._lock = threading.Lock()  # the pending list and the timer
        self._writing = threading.Lock()  # one write at a time, in order
        self._timer: threading.Timer | None = None

    def add(self, sightings: Sequence[ImageSighting], orders: Sequence[int | None] | None = None) -> None:
        """Images to write. ``orders``: each one's place in the stream; those with a place wait
        until :meth:`release` says every earlier input is in, so a stream's images are recorded
        in input order whichever encoder lane finishes first."""
        if not sightings:
            return
        if orders is not None and any(order is not None for order in orders):
            with self._lock:
                for order, sighting in zip(orders, sightings):
                    heapq.heappush(self._held, (order if order is not None else -1, next(self._tie), sighting))
            return
        with self._lock:
            self._pending.extend(sightings)
            full = len(self._pending) >= self.every
            if full or self._timer is None:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = threading.Timer(0.0 if full else self.seconds, self.flush, kwargs={"held": False})
                self._timer.daemon = True
                self._timer.start()

    def release(self, upto: int | None = None) -> None:
        """Every input before place ``upto`` (None: every input) has been embedded: their
        images join what is written, in input order."""
        with self._lock:
            ready = []
            while self._held and (upto is None or self._held[0][0] < upto):
                ready.append(heapq.heappop(self._held)[2])
        self.add(ready)

    def flush(self, held: bool = True) -> int:
        """Write what is waiting (``held``: images waiting for earlier inputs too, in order), in
        one call; returns how many images the store could not take. Timed and full writes leave
        held images waiting (their release keeps the stream's order)."""
        if held:
            self.release()
        with self._writing:
            with self._lock:
                sightings, self._pending = self._pending, []
                timer, self._timer = self._timer, None
            if timer is not None and timer is not threading.current_thread():
                timer.cancel()
            missed = self.recorder.record(sightings, self.model_name) if sightings else 0
            # Counted before the next flush can return: a stream's last flush waits for a timed
            # write in progress, so once it returns every image it saw is recorded or counted.
            if missed and self.figures is not None:
                self.figures.add(unrecorded=missed)
        return missed


class Embedder:
    """One image to one vector with one model (see the module docstring).

    ``lazy``: with a cache in front, load the model at the first miss (the fingerprint that
    keys the cache comes from the checkpoint's files; a Hub model not downloaded yet has
    none, and is loaded at once). ``lanes``: batches encoded at once (0: the runtime's plan).
    """

    def __init__(self, model: str, *, device: str = "auto", precision: str = "auto", lanes: int = 0,
                 exact: bool = False, image_policy: ImagePolicy | None = None, lazy: bool = False,
                 load: EncoderLoader = load_encoder):
        self.model_name = model
        self.exact = exact
        self.preprocessing = "exact" if exact else "fast"
        self.image_policy = image_policy or ImagePolicy()
        self._device, self._precision, self._requested_lanes, self._load = device, precision, lanes, load
        self._encoder: ImageEncoder | None = None
        self._lanes: int | None = None
        self._forward_gate: threading.Semaphore | None = None
        self._load_lock = threading.Lock()
        self._info: ModelInfo | None = None
        self._buffers: weakref.WeakSet[SightingBuffer] = weakref.WeakSet()
        self.fingerprint = model_fingerprint(model) if lazy else None
        if self.fingerprint is None:
            self._load_encoder()

    # -- the model, loaded once (lazily when a cache may make it unnecessary) ---------

    @property
    def encoder(self) -> ImageEncoder:
        if self._encoder is None:
            self._load_encoder()
        return self._encoder  # type: ignore[return-value]

    @property
    def model_loaded(self) -> bool:
        return self._encoder is not None

    def _load_encoder(self) -> None:
        with self._load_lock:
            if self._encoder is not None:
                return
            encoder = self._load(self.model_name, self._device, self._precision)
            self._lanes = encoder.plan_lanes(self._requested_lanes)
            self._forward_gate = threading.Semaphore(self._lanes)
            self.fingerprint = self.fingerprint or encoder.fingerprint
            self._encoder = encoder

    @property
    def lanes(self) -> int:
        """Batches encoded at once (before the model is loaded: the CPU plan it will get)."""
        return self._lanes or self._requested_lanes or min(8, os.cpu_count() or 1)

    @property
    def decode_size(self) -> int | None:
        # Unless exact preprocessing is asked for, JPEGs decode at 1/2, 1/4 or 1/8 scale as
        # long as both sides keep twice the model's input size, so the resize that follows
        # still low-pass filters as it would after a full decode.
        side = self.encoder.min_decode_size
        return 2 * side if side and not self.exact else None

    def model_info(self, cache_dir: str = "") -> ModelInfo:
        """The model's scoring scalars: from the cache under ``cache_dir`` by fingerprint, else from the loaded model."""
        if self._info is None:
            infos = ModelInfoCache(cache_dir) if cache_dir else None
            info = infos.get(self.fingerprint) if infos and self._encoder is None and self.fingerprint else None
            if info is None:
                encoder = self.encoder
                info = ModelInfo(encoder.logit_scale, encoder.logit_bias, encoder.uses_sigmoid)
                if infos:
                    infos.put(encoder.fingerprint, info)
            self._info = info
        return self._info

    # -- the two stages -------------------------------------------------------------------

    def prepare(self, ref: ImageInput, route: CacheRoute, version: str | None = None) -> Prepared | ImageLoadError:
        """In a loader thread: the cached embedding, or model-ready pixels, or the error
        (never raises for one image's problem; see :meth:`embed`). ``version``: the version
        of the object whose bytes ``ref`` (named bytes) holds, read before them (see
        :meth:`version_hit`), for the digest index."""
        prepared = self._prepare(ref, route.cache, version)
        if route.records and isinstance(prepared, Prepared):
            prepared.name = describe(ref)
        return prepared

    def embed(self, ready: Sequence[Prepared], route: CacheRoute, *, job_id: str = "",
              sightings: SightingBuffer | None = None) -> Embedded:
        """Embeddings for images from :meth:`prepare`, one row each, in order: cached ones as
        they are, the others in one forward pass (kept in the route's cache, if any).

        A recording route records every one of them (reference, ``job_id``): now, or through
        ``sightings`` when given (a stream's buffer)."""
        cache, recorder = route.cache, route.recorder
        todo = [p for p in ready if p.vector is None]
        seen: list[ImageSighting] = []
        if todo:
            encoder = self.encoder
            with self._forward_gate:  # type: ignore[union-attr]
                embeds = np.asarray(encoder.encode_images(np.stack([p.pixels for p in todo])))
            if cache is not None:
                if recorder is None:  # a plain cache keeps new embeddings only
                    cache.put_many([(p.key, e) for p, e in zip(todo, embeds) if p.key is not None])
                else:
                    seen = [ImageSighting(p.key, p.name or "", job_id, e) for p, e in zip(todo, embeds) if p.key is not None]
                # What a later hit will read back, so cached and fresh runs give the same scores.
                embeds = normalize(to_fp16(embeds).astype(np.float32))
            for p, e in zip(todo, embeds):
                p.vector = e
        unrecorded = 0
        if recorder is not None:
            fresh = {id(p) for p in todo}
            seen += [ImageSighting(p.key, p.name or "", job_id, None) for p in ready if p.key is not None and id(p) not in fresh]
            if sightings is not None:
                orders = [p.order for p in todo if p.key is not None] + [
                    p.order for p in ready if p.key is not None and id(p) not in fresh]
                sightings.add(seen, orders)
            elif seen:
                unrecorded = recorder.record(seen, self.model_name)
        hashed = [p.hashed for p in ready if p.hashed is not None]
        if hashed:  # local files read and hashed: their digests, for the next run
            cache.remember_digests(hashed)  # type: ignore[union-attr]
        counted = cache is not None
        return Embedded(np.stack([p.vector for p in ready]), hits=len(ready) - len(todo) if counted else 0,
                        misses=len(todo) if counted else 0, unrecorded=unrecorded)

    def stages(self, route: CacheRoute, *, job_id: str = "", sightings: SightingBuffer | None = None,
               figures: Figures | None = None) -> EmbedStages:
        """:meth:`prepare` and :meth:`embed` bound to ``route``, as the schedulers run them."""
        return EmbedStages(self, route, job_id, sightings, figures)

    def sighting_buffer(self, route: CacheRoute, figures: Figures | None = None) -> SightingBuffer | None:
        """A stream's buffer of images to record (None when the route records nothing); :meth:`close` flushes it too."""
        if route.recorder is None:
            return None
        buffer = SightingBuffer(route.recorder, self.model_name, figures)
        self._buffers.add(buffer)
        return buffer

    def pixels(self, ref: ImageInput) -> np.ndarray | ImageLoadError:
        """Model-ready pixels of one image, or the error it met (never raises for that image's problem)."""
        return or_error(self._pixels, ref)

    def close(self) -> None:
        """Write what streams left waiting (an interrupted run), before the caches close."""
        for buffer in list(self._buffers):
            buffer.flush()

    # -- reading, looking up, preprocessing -------------------------------------------------

    def version_hit(self, url: str, route: CacheRoute) -> tuple[str | None, Prepared | None]:
        """For an object-store URL: its version (ETag or generation, and size: one HEAD, only
        with a digest index in the route's cache) and, if the cache hashed that version before,
        its embedding, without reading the object."""
        index = getattr(route.cache, "file_digest", None)
        if index is None or not is_source_url(url):
            return None, None
        version = object_version(url, self.image_policy)
        if version is None:
            return None, None
        digest = index(url, version)
        if digest is None:
            return version, None
        key = self._key(digest)
        cached = route.cache.get_many([key]).get(key)  # type: ignore[union-attr]
        return version, (Prepared(key, vector=normalize(cached)) if cached is not None else None)

    def _prepare(self, ref: ImageInput, cache: ImageEmbeddingCache | None,
                 version: str | None = None) -> Prepared | ImageLoadError:
        if cache is None or isinstance(ref, Image.Image):
            pixels = or_error(self._pixels, ref)
            return pixels if isinstance(pixels, ImageLoadError) else Prepared(None, pixels=pixels)
        local = isinstance(ref, (str, os.PathLike)) and not is_url(ref) and not is_source_url(ref)
        path = os.fspath(ref) if local else None
        st, hit = self._unchanged_file_hit(path, cache) if path is not None else (None, None)
        if isinstance(ref, str) and not local and version is None:
            version, hit = self.version_hit(ref, CacheRoute(cache))
        if hit is not None:
            return hit
        data = or_error(read_bytes, ref, self.image_policy)
        if isinstance(data, ImageLoadError):
            return data
        key = self._key(hashlib.sha256(data).hexdigest())
        if st is not None:
            hashed = (path, st, key.sha256)
        elif version is not None:  # an object read at this version: next time its version alone finds it
            hashed = (describe(ref), version, key.sha256)
        else:
            hashed = None
        cached = cache.get_many([key]).get(key)
        if cached is not None:
            return Prepared(key, vector=normalize(cached), hashed=hashed)
        pixels = or_error(self._pixels, data)
        return pixels if isinstance(pixels, ImageLoadError) else Prepared(key, pixels=pixels, hashed=hashed)

    def _unchanged_file_hit(self, path: str, cache: ImageEmbeddingCache) -> tuple[os.stat_result | None, Prepared | None]:
        """A local file the cache hashed before and that is unchanged since: its embedding,
        without reading the file (stores with a digest index only). Also its stat, taken
        before any read, for recording its digest."""
        index = getattr(cache, "file_digest", None)
        if index is None:
            return None, None
        try:
            st = os.stat(path)
        except OSError:
            return None, None  # reading it fails below, as an error record
        digest = index(path, st)
        if digest is None:
            return st, None
        key = self._key(digest)
        cached = cache.get_many([key]).get(key)
        return st, (Prepared(key, vector=normalize(cached)) if cached is not None else None)

    def _key(self, digest: str) -> EmbeddingKey:
        return EmbeddingKey(digest, self.fingerprint, self.preprocessing)  # type: ignore[arg-type]

    def _pixels(self, ref: ImageInput) -> np.ndarray:
        encoder = self.encoder  # loads the model at the first miss; its errors are not this image's
        if isinstance(ref, (str, os.PathLike)):  # read through its source (files, URLs, object stores, plugins)
            ref = read_bytes(ref, self.image_policy)
        # The picture's memory is reserved (ZSTAGGER_MAX_DECODE_BYTES) until it is model input.
        with open_image(ref, self.image_policy, self.decode_size) as picture:
            return encoder.preprocess(picture, self.exact)


@dataclass
class EmbedStages:
    """The embedder's two stages bound to one route: what :mod:`zstagger.pipeline` and the
    HTTP service's micro-batcher schedule (:class:`zstagger.pipeline.Stages`). Each batch's
    figures go to ``figures``, if given."""

    embedder: Embedder
    route: CacheRoute
    job_id: str = ""
    sightings: SightingBuffer | None = None
    figures: Figures | None = field(default=None)

    def prepare(self, ref: ImageInput) -> Prepared | ImageLoadError:
        return self.embedder.prepare(ref, self.route)

    def embed(self, ready: Sequence[Prepared]) -> np.ndarray:
        done = self.embedder.embed(ready, self.route, job_id=self.job_id, sightings=self.sightings)
        if self.figures is not None:
            self.figures.add(done.hits, done.misses, done.unrecorded)
        return done.vectors


def or_error(step: Callable[..., Any], *args: Any) -> Any:
    """``step(*args)``, or the ImageLoadError that one image met (one odd file never takes
    the batch down). zstagger's other errors (the model could not be loaded) propagate."""
    try:
        return step(*args)
    except ImageLoadError as exc:
        return exc
    except ZstaggerError:
        raise
    except Exception as exc:
        return ImageLoadError("invalid_image", f"could not process image: {type(exc).__name__}: {exc}")
