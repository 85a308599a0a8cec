"""The Python API: ``Tagger(model=...).tag(images, taxonomy=...)``.

The facade: taxonomies in, results out. A :class:`Tagger` compiles each taxonomy once
(text embeddings are cached in memory and on disk), turns embeddings into results and
says how they were made (provenance). Underneath, :mod:`zstagger.embedder` turns one image
into one vector (the model, the image-embedding cache: a hit skips decoding and the
forward pass, and a fully cached run never imports torch) and :mod:`zstagger.pipeline`
runs a stream of images through loader threads and encoder lanes. Scoring is numpy.

With ``ZSTAGGER_STORE`` set, the cache is the embedding store (:mod:`zstagger.store`),
which also records every image tagged: its reference, content hash and job id, written
once per :data:`~zstagger.embedder.WRITE_EVERY` images (a queue chunk: one write), a few
seconds after tagging at the latest, and when the tagger closes.

A taxonomy that names images (examples, counter-examples, known images) is compiled with
their vectors: the ones embedded in the spec for this model, else its image files read
and embedded here, through the image-embedding cache (``ZSTAGGER_CACHE_DIR``, even when
tagging leaves it off), so a taxonomy with hundreds of examples compiles in seconds after
the first time (:mod:`zstagger.fewshot`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .classifier import TaxonomyClassifier
from .embedder import WRITE_EVERY, CacheRoute, Embedder, EmbedStages, Figures, Prepared, open_image_cache
from .embedding_cache import EmbeddingCache, ImageEmbeddingCache, default_image_cache
from .errors import ConfigurationError, ImageLoadError, record_type
from .fewshot import ImageSets, resolve_image_sets
from .fewshot.sets import LoadPack
from .images import ImageInput, ImagePolicy, describe, iter_inputs
from .pipeline import Pipeline
from .registry import resolve_taxonomy
from .results import KnownImageMatch, LabelScore, Provenance, TagResult, format_results
from .settings import Settings
from .taxonomy import Taxonomy

if TYPE_CHECKING:
    from .embedding_cache import ModelInfo

__all__ = ["WRITE_EVERY", "Prepared", "Tagger"]


class Tagger:
    """Tags images with a CLIP-family model against taxonomies or ad-hoc labels.

    Arguments left as ``None`` come from the ``ZSTAGGER_*`` environment (see
    :class:`~zstagger.settings.Settings`), then from the defaults.
    ``exact_preprocessing=True`` with ``precision="fp32"`` reproduces the Hugging Face
    pipeline's scores (to ~1e-6); the defaults trade that for ~2.5x the speed on CPU.

    ``image_cache``: ``True`` for the SQLite cache under ``ZSTAGGER_CACHE_DIR``, ``False``
    for none, any :class:`~zstagger.embedding_cache.ImageEmbeddingCache` to use that, or
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
        image_cache: ImageEmbeddingCache | bool | None = None,
        vector_loader: LoadPack | None = None,
    ):
        settings = settings or Settings()
        self.settings = settings
        self.batch_size = int(batch_size or settings.batch_size)
        if self.batch_size < 1:
            raise ConfigurationError(f"batch size must be at least 1, got {self.batch_size}")
        self.model_name = model or settings.model
        threads = loader_threads if loader_threads is not None else settings.loader_threads
        self.loader_threads = threads or min(4, os.cpu_count() or 1)
        exact = settings.exact_preprocessing if exact_preprocessing is None else exact_preprocessing
        self.image_cache, self._owns_cache = open_image_cache(image_cache, settings, connections=self.loader_threads + 1)
        # An embedding store records every image seen (reference, job), not only new embeddings.
        self._route = CacheRoute.of(self.image_cache)
        self._figures = Figures()  # what calls through the tagger's own route returned, added up
        self.vector_loader = vector_loader
        self._examples_cache: ImageEmbeddingCache | None | bool = False  # False: not opened yet
        self._classifiers: dict[tuple, TaxonomyClassifier] = {}
        self._lock = threading.Lock()
        self._compile_lock = threading.Lock()  # compiling may embed example images, which takes self._lock
        # With a cache the model waits for the first miss.
        self._embedder = Embedder(
            self.model_name, device=device or settings.device, precision=precision or settings.precision,
            lanes=lanes if lanes is not None else settings.inference_lanes, exact=exact,
            image_policy=image_policy or ImagePolicy.from_settings(settings), lazy=self.image_cache is not None,
        )
        self._pipeline: Pipeline[ImageInput] = Pipeline(self.loader_threads, lambda: self._embedder.lanes)

    # -- the model: the embedder's ---------------------------------------------------

    encoder = property(lambda self: self._embedder.encoder, doc="The model runtime (loaded now if it was not yet).")
    model_loaded = property(lambda self: self._embedder.model_loaded)
    fingerprint = property(lambda self: self._embedder.fingerprint, doc="What keys cached embeddings and results' provenance.")
    lanes = property(lambda self: self._embedder.lanes, doc="Batches encoded at once (before the model loads: its plan).")
    decode_size = property(lambda self: self._embedder.decode_size)
    exact = property(lambda self: self._embedder.exact)
    preprocessing = property(lambda self: self._embedder.preprocessing, doc='"exact" or "fast".')
    image_policy = property(lambda self: self._embedder.image_policy)

    def model_info(self) -> ModelInfo:
        """The model's scoring scalars: from the cache by fingerprint, else from the loaded model."""
        return self._embedder.model_info(self.settings.cache_dir)

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
                embed: Callable[[Sequence[str]], np.ndarray] = lambda prompts: np.asarray(self.encoder.encode_text(prompts))
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
        out: list[np.ndarray | ImageLoadError] = []
        for refs, embeds, errors in self.embed_batches(images, route=self._examples_route()):
            vectors = iter(embeds if embeds is not None else [])
            out.extend(error if error is not None else next(vectors) for error in errors)
            if progress is not None:
                progress(len(refs))
        return out

    def _examples_route(self) -> CacheRoute:
        # Not an embedding store: example images are not images tagged, and retag must not list them.
        if self.image_cache is not None and not self._route.records:
            return self._route
        with self._lock:
            if self._examples_cache is False:
                self._examples_cache = default_image_cache(self.settings.cache_dir)
            return CacheRoute(self._examples_cache)  # type: ignore[arg-type]

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
                out.append(TagResult.failed(name, taxonomy.name, record_type(error), error.message, error.transient,
                                            provenance))
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

    # -- embedding (the embedder's stages, scheduled by the pipeline) --------------------

    def embed_batches(
        self, images: Iterable[ImageInput], batch_size: int | None = None, *, route: CacheRoute | None = None,
        job_id: str = "",
    ) -> Iterator[tuple[list[ImageInput], np.ndarray | None, list[ImageLoadError | None]]]:
        """Load, preprocess and encode images in batches, keeping every stage busy (:mod:`zstagger.pipeline`).

        Yields ``(refs, embeddings, errors)`` per batch, in input order: ``embeddings`` has
        one row per ref whose error is None (None when no image of the batch could be read).
        ``route``: where images are looked up and kept (default: the tagger's own image
        cache, whose hits and misses :meth:`cache_stats` counts). An embedding store as the
        tagger's own cache records the images with ``job_id`` (see the module docstring).
        """
        route = route or self._route
        own = route is self._route
        sightings = self._embedder.sighting_buffer(route, self._figures if own else None)
        stages = self._embedder.stages(route, job_id=job_id, sightings=sightings, figures=self._figures if own else None)
        try:
            yield from self._pipeline.run(images, stages, batch_size or self.batch_size)
        finally:
            if sightings is not None:
                sightings.flush()

    def stages(self, job_id: str = "") -> EmbedStages:
        """The embedder's two stages through the tagger's own cache, as a scheduler runs them
        (the HTTP service's micro-batcher): images are recorded as each batch is embedded."""
        return self._embedder.stages(self._route, job_id=job_id, figures=self._figures)

    def prepare(self, ref: ImageInput) -> Prepared | ImageLoadError:
        """``stages().prepare``: in a loader thread, the cached embedding, model-ready pixels, or the error."""
        return self.stages().prepare(ref)

    def embed_prepared(self, ready: Sequence[Prepared], *, job_id: str = "") -> np.ndarray:
        """``stages(job_id).embed``: embeddings for images from :meth:`prepare`, one row each, in order."""
        return self.stages(job_id).embed(ready)

    def preprocess(self, images: Iterable[ImageInput]) -> list[np.ndarray | ImageLoadError]:
        """Read, decode and preprocess images in the loader threads, without encoding them:
        model-ready pixels, or the error that image met, in input order."""
        return self._pipeline.map(self._embedder.pixels, images)

    def cache_stats(self) -> dict[str, int]:
        """Images whose embedding came from the image cache (hits) or was computed (misses)."""
        return {"hits": self._figures.hits, "misses": self._figures.misses}

    @property
    def unrecorded(self) -> int:
        """Images tagged that the embedding store could not record (it stayed away)."""
        return self._figures.unrecorded

    def close(self) -> None:
        # Threads first (an interrupted run stops in about one image's time), then what
        # streams left to record, then the caches.
        self._pipeline.close()
        self._embedder.close()
        if self._owns_cache and hasattr(self.image_cache, "close"):
            self.image_cache.close()  # type: ignore[union-attr]
        if self._examples_cache not in (False, None) and hasattr(self._examples_cache, "close"):
            self._examples_cache.close()  # type: ignore[union-attr]

    def __enter__(self) -> Tagger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

