"""The Python API: ``Tagger(model=...).tag(images, taxonomy=...)``.

A :class:`Tagger` loads the model once, compiles each taxonomy once (text embeddings are
cached in memory and on disk), and tags images in batches: loader threads decode and
preprocess upcoming images while encoder lanes run the model on earlier batches.

With an image-embedding cache (``image_cache=``, any :class:`~zstagger.embedding_cache.ImageEmbeddingStore`)
the loader threads read and hash each image's bytes first; a hit skips decoding and the
forward pass, and the model is loaded only at the first miss, so a fully cached run
never imports torch. Scoring is numpy.

With ``ZSTAGGER_STORE`` set, the cache is the embedding store (:mod:`zstagger.store`),
which also records every image tagged: its reference, content hash and job id, written
once per :data:`WRITE_EVERY` images (a queue chunk: one write).

A taxonomy that names images (examples, counter-examples, known images) is compiled with
their vectors: the ones embedded in the spec for this model, else its image files read
and embedded here, through the image-embedding cache (``ZSTAGGER_CACHE_DIR``, even when
tagging leaves it off), so a taxonomy with hundreds of examples compiles in seconds after
the first time (:mod:`zstagger.fewshot`).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from . import extras
from .classifier import TaxonomyClassifier
from .embedding_cache import (
    EmbeddingCache,
    EmbeddingKey,
    ImageEmbeddingStore,
    ImageSighting,
    ModelInfo,
    ModelInfoCache,
    default_image_cache,
)
from .embedding_cache.images import to_fp16
from .engine.locate import model_fingerprint
from .engine.scoring import normalize
from .errors import ConfigurationError, ImageLoadError, ZstaggerError
from .fewshot import ImageSets, resolve_image_sets
from .fewshot.sets import LoadPack
from .images import ImageInput, ImagePolicy, describe, is_url, iter_inputs, open_image, read_image_bytes
from .registry import resolve_taxonomy
from .results import KnownImageMatch, LabelScore, Provenance, TagResult, format_results
from .settings import Settings
from .taxonomy import Taxonomy

if TYPE_CHECKING:
    from .engine.model import ClipEncoder

_PREFETCH_BATCHES = 2
#: Images an embedding store is told about per write when tagging a stream (at least a
#: whole queue chunk, ZSTAGGER_CHUNK_SIZE <= 1024, so a chunk is one write).
WRITE_EVERY = 1024
_OWN = object()  # "the Tagger's own image cache", for the methods that can be handed another
_cores: int | None = None


def _cpu_budget() -> int:
    """torch's thread count before any Tagger split it into lanes (read once per process)."""
    global _cores
    if _cores is None:
        import torch

        _cores = torch.get_num_threads()
    return _cores


@dataclass
class Prepared:
    """One readable image on its way to an embedding: cached already, or pixels to encode
    (:meth:`Tagger.prepare`, then :meth:`Tagger.embed_prepared`)."""

    key: EmbeddingKey | None
    vector: np.ndarray | None = None
    pixels: np.ndarray | None = None
    hashed: tuple[str, os.stat_result, str] | None = None  # a local file read and hashed: for the digest index
    name: str | None = None  # the reference as results name it, when an embedding store records images


class Tagger:
    """Tags images with a CLIP-family model against taxonomies or ad-hoc labels.

    Arguments left as ``None`` come from the ``ZSTAGGER_*`` environment (see
    :class:`~zstagger.settings.Settings`), then from the defaults.
    ``exact_preprocessing=True`` with ``precision="fp32"`` reproduces the Hugging Face
    pipeline's scores (to ~1e-6); the defaults trade that for ~2.5x the speed on CPU.

    ``image_cache``: ``True`` for the SQLite cache under ``ZSTAGGER_CACHE_DIR``, ``False``
    for none, any :class:`~zstagger.embedding_cache.ImageEmbeddingStore` to use that, or
    ``None`` for the embedding store of ``ZSTAGGER_STORE`` if set, else the cache if
    ``ZSTAGGER_IMAGE_CACHE`` (off by default). With a cache, image embeddings are rounded
    to fp16 whether they were cached or just computed (so a cached run scores exactly like
    the first), and the model loads at the first miss.

    ``vector_loader``: where a taxonomy's embedded image vectors that travel by hash alone
    are read (a queue worker reads them from Redis): ``sha256 -> bytes | None``.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str | None = None,
        precision: str | None = None,
        batch_size: int | None = None,
        loader_threads: int | None = None,
        lanes: int | None = None,
        exact_preprocessing: bool | None = None,
        image_policy: ImagePolicy | None = None,
        settings: Settings | None = None,
        image_cache: ImageEmbeddingStore | bool | None = None,
        vector_loader: LoadPack | None = None,
    ):
        settings = settings or Settings()
        self.settings = settings
        self.batch_size = int(batch_size or settings.batch_size)
        if self.batch_size < 1:
            raise ConfigurationError(f"batch size must be at least 1, got {self.batch_size}")
        self.image_policy = image_policy or ImagePolicy.from_settings(settings)
        self.model_name = model or settings.model
        self._device, self._precision = device or settings.device, precision or settings.precision
        threads = loader_threads if loader_threads is not None else settings.loader_threads
        self.loader_threads = threads or min(4, os.cpu_count() or 1)
        self._requested_lanes = lanes if lanes is not None else settings.inference_lanes
        self.exact = settings.exact_preprocessing if exact_preprocessing is None else exact_preprocessing
        self.preprocessing = "exact" if self.exact else "fast"
        # image_cache: an object (used as given), True/False, or None to follow ZSTAGGER_STORE, then ZSTAGGER_IMAGE_CACHE.
        use_cache = settings.image_cache if image_cache is None else image_cache
        self._owns_cache = use_cache is True
        self.image_cache: ImageEmbeddingStore | None = (
            default_image_cache(settings.cache_dir) if use_cache is True else (use_cache or None)  # type: ignore[assignment]
        )
        if image_cache is None and settings.store:
            from .store import open_store

            self.image_cache = open_store(settings.store, timeout=settings.store_timeout, connections=self.loader_threads + 1)
            self._owns_cache = True
        # An embedding store records every image seen (reference, job), not only new embeddings.
        self._recorder = getattr(self.image_cache, "record", None)
        self.cache_hits = self.cache_misses = self.unrecorded = 0
        self.vector_loader = vector_loader
        self._examples_cache: ImageEmbeddingStore | None | bool = False  # False: not opened yet
        self._encoder: ClipEncoder | None = None
        self._lanes: int | None = None
        self._forward_gate: threading.Semaphore | None = None
        self._info: ModelInfo | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._encoders: ThreadPoolExecutor | None = None
        self._classifiers: dict[str, TaxonomyClassifier] = {}
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._compile_lock = threading.Lock()  # compiling may embed example images, which takes self._lock
        # With a cache the model waits for the first miss; the fingerprint that keys the
        # cache comes from the checkpoint's files. A Hub model not downloaded yet has none.
        self.fingerprint = model_fingerprint(self.model_name) if self.image_cache is not None else None
        if self.fingerprint is None:
            self._load_encoder()

    # -- the model, loaded once (lazily when a cache may make it unnecessary) ---------

    @property
    def encoder(self) -> ClipEncoder:
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
            try:
                from .engine.model import ClipEncoder
            except ImportError as exc:  # a producer-only install: no torch, no transformers
                raise extras.missing(exc.name or "torch") from None

            encoder = ClipEncoder.load(self.model_name, device=self._device, precision=self._precision)
            self._lanes = self._plan_lanes(encoder, self._requested_lanes)
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

    def model_info(self) -> ModelInfo:
        """The model's scoring scalars: from the cache by fingerprint, else from the loaded model."""
        if self._info is None:
            infos = ModelInfoCache(self.settings.cache_dir) if self.settings.cache_dir else None
            info = infos.get(self.fingerprint) if infos and self._encoder is None and self.fingerprint else None
            if info is None:
                encoder = self.encoder
                info = ModelInfo(encoder.logit_scale, encoder.logit_bias, encoder.uses_sigmoid)
                if infos:
                    infos.put(encoder.fingerprint, info)
            self._info = info
        return self._info

    # -- taxonomies -------------------------------------------------------------------

    resolve = staticmethod(resolve_taxonomy)

    def classifier(self, taxonomy: Taxonomy) -> TaxonomyClassifier:
        """The compiled taxonomy; its text embeddings are computed on first use only.

        They are also cached on disk (``ZSTAGGER_CACHE_DIR``), keyed by model and prompts.
        Image sets (:meth:`image_sets`) are resolved then too; an :class:`~zstagger.errors.ExamplesError`
        says why they cannot be.
        """
        # Relative image paths name other files under another base: part of the key.
        key = (taxonomy.fingerprint, taxonomy.images_base() if taxonomy.has_images else None)
        with self._lock:
            compiled = self._classifiers.get(key)
        if compiled is not None:
            return compiled
        with self._compile_lock:
            compiled = self._classifiers.get(key)
            if compiled is None:
                embed: Callable[[Sequence[str]], np.ndarray] = lambda prompts: self.encoder.encode_text(prompts).numpy()
                info = self.model_info()
                if self.settings.cache_dir:
                    embed = EmbeddingCache(self.settings.cache_dir, self.fingerprint).wrap(embed)  # type: ignore[arg-type]
                compiled = TaxonomyClassifier.build(
                    taxonomy, embed, logit_scale=info.logit_scale, logit_bias=info.logit_bias, uses_sigmoid=info.uses_sigmoid,
                    image_sets=self.image_sets(taxonomy),
                )
                with self._lock:
                    self._classifiers[key] = compiled
            return compiled

    def image_sets(self, taxonomy: Taxonomy) -> ImageSets | None:
        """The taxonomy's example, counter-example and known images as vectors for this model
        (None when it names none): embedded in the spec, else read and embedded here."""
        if not taxonomy.has_images:
            return None
        fingerprint = self.fingerprint or self.encoder.fingerprint  # a Hub model not cached yet: loaded now
        return resolve_image_sets(taxonomy, fingerprint, self.model_name, self.embed_images, self.vector_loader)

    def embed_images(
        self, images: Sequence[ImageInput], progress: Callable[[int], None] | None = None
    ) -> list[np.ndarray | ImageLoadError]:
        """Each image's unit embedding, or the error it met, in order; with the same loading
        (limits, URL policy) as tagging, through the image-embedding cache of
        ``ZSTAGGER_CACHE_DIR`` (the tagger's own when it has one, other than an embedding
        store), so that example images are encoded once per model. ``progress(n)`` is told how many images each batch did."""
        cache = self._images_cache()
        out: list[np.ndarray | ImageLoadError] = []
        for refs, embeds, errors in self.embed_batches(images, cache=cache):
            vectors = iter(embeds if embeds is not None else [])
            out.extend(error if error is not None else next(vectors) for error in errors)
            if progress is not None:
                progress(len(refs))
        return out

    def _images_cache(self) -> ImageEmbeddingStore | None:
        # Not an embedding store: example images are not images tagged, and retag must not list them.
        if self.image_cache is not None and self._recorder is None:
            return self.image_cache
        with self._lock:
            if self._examples_cache is False:
                self._examples_cache = default_image_cache(self.settings.cache_dir)
            return self._examples_cache  # type: ignore[return-value]

    # -- tagging ----------------------------------------------------------------------

    def tag(
        self,
        images: ImageInput | Iterable[ImageInput],
        taxonomy: str | Taxonomy | None = None,
        *,
        labels: Sequence[str] | None = None,
        template: str | None = None,
        top_k: int | None = None,
        batch_size: int | None = None,
        job_id: str = "",
    ) -> list[TagResult]:
        """Tag images (paths, directories, URLs, bytes or PIL images); one result per image, in order."""
        return list(self.tag_iter(images, taxonomy, labels=labels, template=template, top_k=top_k, batch_size=batch_size,
                                  job_id=job_id))

    def tag_iter(
        self,
        images: ImageInput | Iterable[ImageInput],
        taxonomy: str | Taxonomy | None = None,
        *,
        labels: Sequence[str] | None = None,
        template: str | None = None,
        top_k: int | None = None,
        batch_size: int | None = None,
        job_id: str = "",
    ) -> Iterator[TagResult]:
        """Like :meth:`tag`, yielding results as batches finish (constant memory).

        ``batch_size`` overrides the Tagger's for this call (queue workers split a chunk
        so that every lane gets a share). ``job_id``: the queued job these images belong
        to, recorded with them in an embedding store.
        """
        spec = self.resolve(taxonomy, labels, template)
        if top_k is not None and top_k < 1:
            raise ConfigurationError(f"top_k must be at least 1, got {top_k}")
        self.classifier(spec)  # compile (text embeddings) before the first image is read
        for refs, embeds, errors in self.embed_batches(iter_inputs(images), batch_size, job_id=job_id):
            yield from self.results(spec, refs, embeds, errors, top_k)

    def results(
        self,
        taxonomy: Taxonomy,
        refs: Sequence[ImageInput],
        embeds: np.ndarray | None,
        errors: Sequence[ImageLoadError | None],
        top_k: int | None = None,
        source: str = "image",
    ) -> list[TagResult]:
        """Result records for one batch: ``embeds`` has a row for each ref whose error is None.

        The one place where embeddings become :class:`TagResult`s (tagging, the HTTP
        service's micro-batches, anything scoring stored embeddings; ``source="store"``
        marks results scored from stored embeddings in their provenance). :meth:`result_lines`
        is the same as JSON lines, for millions of rows.
        """
        compiled = self.classifier(taxonomy)
        provenance = self.provenance(taxonomy, source)
        done = iter(compiled.classify(embeds, top_k) if embeds is not None else [])
        out = []
        for ref, error in zip(refs, errors):
            name = describe(ref)
            if error is not None:
                out.append(TagResult.failed(name, taxonomy.name, error.kind, error.message, error.transient, provenance))
                continue
            c = next(done)
            out.append(TagResult(
                image=name,
                taxonomy=taxonomy.name,
                scores=[LabelScore(label=label, score=score, cosine=cos) for label, score, cos in c.scores],
                tags=c.tags,
                verdict=c.verdict,
                provenance=provenance,
                matches=[KnownImageMatch(label=label, image=image, cosine=cos) for label, image, cos in c.matches]
                if c.matches else None,
            ))
        return out

    def result_lines(
        self, taxonomy: Taxonomy, names: Sequence[str], embeds: np.ndarray, top_k: int | None = None, source: str = "image"
    ) -> list[str]:
        """``[r.to_json() for r in self.results(...)]`` for images that all have an embedding,
        written straight from the arrays (no result objects): re-tagging a stored catalogue."""
        compiled = self.classifier(taxonomy)
        batch = compiled.classify_batch(embeds, top_k)
        return format_results(names, taxonomy.name, compiled.names, batch.ranked, batch.scores, batch.cosines, batch.tags,
                              batch.verdicts, provenance=self.provenance(taxonomy, source), matches=batch.matches)

    def provenance(self, taxonomy: Taxonomy, source: str = "image") -> Provenance:
        """What this Tagger's results with ``taxonomy`` record about how they were made."""
        return Provenance(model=self.model_name, model_fingerprint=self.fingerprint, taxonomy_version=taxonomy.version,
                          taxonomy_fingerprint=taxonomy.fingerprint, preprocessing=self.preprocessing, source=source)

    @staticmethod
    def _plan_lanes(encoder: ClipEncoder, lanes: int) -> int:
        """How many batches to encode at once, and torch's threads for each.

        On CPU, several single-threaded forwards side by side beat one forward spread
        over every core (no synchronisation between threads; measured ~10% more
        throughput on 2 cores), and decoding slots in between them. The cores torch was
        given (``torch.get_num_threads()``) are shared out among the lanes.
        """
        import torch

        if encoder.device.type != "cpu":
            return 1
        cores = _cpu_budget()
        lanes = lanes or min(8, cores)
        torch.set_num_threads(max(1, cores // lanes))
        return lanes

    def embed_batches(
        self, images: Iterable[ImageInput], batch_size: int | None = None, *, cache: Any = _OWN, job_id: str = "",
    ) -> Iterator[tuple[list[ImageInput], np.ndarray | None, list[ImageLoadError | None]]]:
        """Load, preprocess and encode images in batches, keeping every stage busy.

        Decoding runs in the loader threads, ahead of the encoder lanes; up to ``lanes``
        batches are encoded at once. Yields ``(refs, embeddings, errors)`` per batch, in
        input order: ``embeddings`` has one row per ref whose error is None (None when
        no image of the batch could be read). ``cache``: another image-embedding cache to
        use than the tagger's own (whose hits and misses :meth:`cache_stats` counts), or None.
        An embedding store as the tagger's own cache is told about the images every
        :data:`WRITE_EVERY` images and at the end, with ``job_id``.
        """
        loader, encoders = self._pools()
        source = iter(images)
        size = batch_size or self.batch_size
        batches = iter(lambda: list(islice(source, size)), [])
        # Each batch gathers its own sightings; they join ``pending`` in input order as the batches are
        # taken in order, so the store records a run's images in input order whichever lane finishes first.
        in_flight: deque[tuple[Future, list[ImageSighting] | None]] = deque()
        records = self._records(cache)
        pending: list[ImageSighting] | None = [] if records else None

        def submit_next() -> None:
            batch = next(batches, None)
            if batch:
                loads = [(ref, loader.submit(self.prepare, ref, cache)) for ref in batch]
                sightings: list[ImageSighting] | None = [] if records else None
                in_flight.append((encoders.submit(self._encode_batch, loads, cache, job_id, sightings), sightings))

        try:
            for _ in range(self.lanes + _PREFETCH_BATCHES - 1):
                submit_next()
            while in_flight:
                done, sightings = in_flight.popleft()
                submit_next()
                result = done.result()
                if pending is not None and sightings:
                    pending.extend(sightings)
                yield result
                if pending is not None and len(pending) >= WRITE_EVERY:
                    self._flush(pending)
        finally:
            if pending is not None:  # batches already encoded but not taken (the caller stopped early) are recorded too
                for done, sightings in in_flight:
                    if done.done() and not done.cancelled() and done.exception() is None and sightings:
                        pending.extend(sightings)
            if pending:
                self._flush(pending)

    def preprocess(self, images: Iterable[ImageInput]) -> list[np.ndarray | ImageLoadError]:
        """Read, decode and preprocess images in the loader threads, without encoding them:
        model-ready pixels, or the error that image met, in input order."""
        loader, _ = self._pools()
        return list(loader.map(lambda ref: _or_error(self._pixels, ref), images))

    def cache_stats(self) -> dict[str, int]:
        """Images whose embedding came from the image cache (hits) or was computed (misses)."""
        with self._lock:
            return {"hits": self.cache_hits, "misses": self.cache_misses}

    def _flush(self, pending: list[ImageSighting]) -> None:
        """Tell the embedding store about the images gathered so far, in one write."""
        with self._lock:
            sightings = pending[:]
            pending.clear()
        self._record(sightings)

    def _records(self, cache: Any) -> bool:
        """Whether images read through ``cache`` are recorded: only through the tagger's own
        cache, when that is an embedding store (another cache, for example images, is not)."""
        return self._recorder is not None and (cache is _OWN or cache is self.image_cache)

    def _record(self, sightings: list[ImageSighting]) -> None:
        """Write sightings to the embedding store; what it could not take is counted as unrecorded."""
        if not sightings or self._recorder is None:
            return
        missed = self._recorder(sightings, self.model_name)
        if missed:
            with self._lock:
                self.unrecorded += missed

    def _encode_batch(
        self, loads: list[tuple[ImageInput, Future]], cache: Any = _OWN, job_id: str = "",
        pending: list[ImageSighting] | None = None,
    ) -> tuple[list[ImageInput], np.ndarray | None, list[ImageLoadError | None]]:
        refs, errors, ready = [], [], []
        for ref, future in loads:
            prepared = future.result()
            refs.append(ref)
            errors.append(prepared if isinstance(prepared, ImageLoadError) else None)
            if not isinstance(prepared, ImageLoadError):
                ready.append(prepared)
        return refs, (self.embed_prepared(ready, cache, job_id=job_id, pending=pending) if ready else None), errors

    def embed_prepared(
        self, ready: Sequence[Prepared], cache: Any = _OWN, *, job_id: str = "", pending: list[ImageSighting] | None = None
    ) -> np.ndarray:
        """Embeddings for images from :meth:`prepare`, one row each, in order: cached ones as
        they are, the others in one forward pass (stored in the image cache, if any).

        An embedding store as the tagger's own cache records every one of them (reference,
        ``job_id``), now or, with ``pending``, when the caller flushes it. ``cache``: another
        image-embedding cache than the tagger's own (nothing is recorded there), or None."""
        cache = self.image_cache if cache is _OWN else cache
        recorder = self._recorder if self._records(cache) else None
        todo = [p for p in ready if p.vector is None]
        sightings: list[ImageSighting] = []
        if todo:
            encoder = self.encoder
            with self._forward_gate:  # type: ignore[union-attr]
                embeds = encoder.encode_images(np.stack([p.pixels for p in todo])).numpy()
            if cache is not None:
                if recorder is None:  # a plain cache keeps new embeddings only
                    cache.put_many([(p.key, e) for p, e in zip(todo, embeds) if p.key is not None])
                else:
                    sightings = [ImageSighting(p.key, p.name or "", job_id, e) for p, e in zip(todo, embeds) if p.key is not None]
                # What a later hit will read back, so cached and fresh runs give the same scores.
                embeds = normalize(to_fp16(embeds).astype(np.float32))
            for p, e in zip(todo, embeds):
                p.vector = e
        if recorder is not None:
            fresh = {id(p): s for p, s in zip([p for p in todo if p.key is not None], sightings)}
            # in input order, fresh and stored alike
            sightings = [fresh.get(id(p)) or ImageSighting(p.key, p.name or "", job_id, None)
                         for p in ready if p.key is not None]
            if pending is not None:
                with self._lock:
                    pending.extend(sightings)
            else:
                self._record(sightings)
        hashed = [p.hashed for p in ready if p.hashed is not None]
        if hashed:  # local files read and hashed: their digests, for the next run
            cache.remember_digests(hashed)  # type: ignore[union-attr]
        if cache is not None and cache is self.image_cache:
            with self._lock:
                self.cache_misses += len(todo)
                self.cache_hits += len(ready) - len(todo)
        return np.stack([p.vector for p in ready])

    def prepare(self, ref: ImageInput, cache: Any = _OWN) -> Prepared | ImageLoadError:
        """In a loader thread: the cached embedding, or model-ready pixels, or the error
        (never raises for one image's problem; see :meth:`embed_prepared`). ``cache``:
        another image-embedding cache than the tagger's own, or None."""
        cache = self.image_cache if cache is _OWN else cache
        prepared = self._prepare(ref, cache)
        if self._records(cache) and isinstance(prepared, Prepared):
            prepared.name = describe(ref)
        return prepared

    def _prepare(self, ref: ImageInput, cache: ImageEmbeddingStore | None) -> Prepared | ImageLoadError:
        if cache is None or isinstance(ref, Image.Image):
            pixels = _or_error(self._pixels, ref)
            return pixels if isinstance(pixels, ImageLoadError) else Prepared(None, pixels=pixels)
        path = os.fspath(ref) if isinstance(ref, (str, os.PathLike)) and not is_url(ref) else None
        st, hit = self._unchanged_file_hit(path, cache) if path is not None else (None, None)
        if hit is not None:
            return hit
        data = _or_error(read_image_bytes, ref, self.image_policy)
        if isinstance(data, ImageLoadError):
            return data
        key = self._key(hashlib.sha256(data).hexdigest())
        hashed = (path, st, key.sha256) if st is not None else None
        cached = cache.get_many([key]).get(key)
        if cached is not None:
            return Prepared(key, vector=normalize(cached), hashed=hashed)
        pixels = _or_error(self._pixels, data)
        return pixels if isinstance(pixels, ImageLoadError) else Prepared(key, pixels=pixels, hashed=hashed)

    def _unchanged_file_hit(self, path: str, cache: ImageEmbeddingStore) -> tuple[os.stat_result | None, Prepared | None]:
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
        # The picture's memory is reserved (ZSTAGGER_MAX_DECODE_BYTES) until it is model input.
        with open_image(ref, self.image_policy, self.decode_size) as picture:
            return encoder.preprocess(picture, self.exact)

    def _pools(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.loader_threads, thread_name_prefix="zstagger-load")
                self._encoders = ThreadPoolExecutor(self.lanes, thread_name_prefix="zstagger-encode")
            return self._pool, self._encoders  # type: ignore[return-value]

    def close(self) -> None:
        with self._lock:
            loader, encoders = self._pool, self._encoders
            self._pool = self._encoders = None
        # Loads not started are dropped first: the encoder tasks waiting on them then end at
        # once, so an interrupted run stops in about one image's time, not a prefetch's.
        if loader is not None:
            loader.shutdown(wait=False, cancel_futures=True)
        if encoders is not None:
            encoders.shutdown(wait=True, cancel_futures=True)
        if loader is not None:
            loader.shutdown(wait=True)
        if self._owns_cache and hasattr(self.image_cache, "close"):
            self.image_cache.close()  # type: ignore[union-attr]
        if self._examples_cache not in (False, None) and hasattr(self._examples_cache, "close"):
            self._examples_cache.close()  # type: ignore[union-attr]

    def __enter__(self) -> Tagger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _or_error(step: Callable[..., Any], *args: Any) -> Any:
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
