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

import functools
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .classifier import TaxonomyClassifier
from .compiled_cache import CompiledCache
from .engine.scoring import InputTexts
from .engine.vectors import normalize
from .embedder import NO_CACHE, WRITE_EVERY, CacheRoute, Embedder, EmbedStages, Figures, Prepared, open_image_cache
from .embedding_cache import EmbeddingCache, EmbeddingKey, ImageEmbeddingCache, ImageSighting, default_image_cache
from .embedding_cache.images import to_fp16
from .errors import ConfigurationError, ImageLoadError, record_type
from .fewshot import ImageSets, resolve_image_sets
from .fewshot.sets import LoadPack
from .images import ImageInput, ImagePolicy, ImageWithText, describe, iter_inputs
from .media import (
    MediaOptions,
    MediaRecord,
    MediaSource,
    judge_range,
    media_digest,
    rejudge_media,
    sampling_signature,
    score_media,
    tag_media_each,
)
from .pipeline import Pipeline, SetAside
from .registry import resolve_each, resolve_taxonomy
from .results import KnownImageMatch, LabelExplanation, LabelScore, MultiTagResult, Provenance, TagResult, format_results
from .runtimes import load_encoder
from .runtimes.qualification import RuntimeGate
from .settings import Settings
from .sources import expand_prefixes
from .stages import INTERRUPTED, MediaAside, Numbered, StopReading, TextAside
from .taxonomy import Taxonomy

if TYPE_CHECKING:
    from .embedding_cache import ModelInfo

__all__ = ["INTERRUPTED", "TEXT_CACHE_ENTRIES", "WRITE_EVERY", "Prepared", "Tagger"]

#: Distinct input texts (product titles) whose embeddings a Tagger keeps, by hash, for the run.
TEXT_CACHE_ENTRIES = 8192


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

    ``explain``: give every result its decision trail (``explanation``, :mod:`zstagger.trail`);
    ``None`` follows ``ZSTAGGER_EXPLAIN`` (on by default).
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
        explain: bool | None = None,
    ):
        settings = settings or Settings()
        self.settings = settings
        self.explain = settings.explain if explain is None else explain
        self.batch_size = int(batch_size or settings.batch_size)
        if self.batch_size < 1:
            raise ConfigurationError(f"batch size must be at least 1, got {self.batch_size}")
        self.model_name = model or settings.model
        threads = loader_threads if loader_threads is not None else settings.loader_threads
        self.loader_threads = threads or min(4, os.cpu_count() or 1)
        exact = settings.exact_preprocessing if exact_preprocessing is None else exact_preprocessing
        self._media_options: MediaOptions | None = None
        self.image_cache, self._owns_cache = open_image_cache(image_cache, settings, connections=self.loader_threads + 1)
        # An embedding store records every image seen (reference, job), not only new embeddings.
        self._route = CacheRoute.of(self.image_cache)
        self._figures = Figures()  # what calls through the tagger's own route returned, added up
        self.vector_loader = vector_loader
        self._examples_cache: ImageEmbeddingCache | None | bool = False  # False: not opened yet
        # Compiled taxonomies and label sets, bounded by memory (ZSTAGGER_CLASSIFIER_CACHE_BYTES).
        self._compiled: CompiledCache[TaxonomyClassifier] = CompiledCache(settings.classifier_cache_bytes)
        self._lock = threading.Lock()
        self._text_vectors: OrderedDict[str, np.ndarray] = OrderedDict()  # sha256 of a text -> its unit embedding
        # With a cache the model waits for the first miss.
        self._embedder = Embedder(
            self.model_name, device=device or settings.device, precision=precision or settings.precision,
            lanes=lanes if lanes is not None else settings.inference_lanes, exact=exact,
            image_policy=image_policy or ImagePolicy.from_settings(settings), lazy=self.image_cache is not None,
            load=lambda model, device, precision: load_encoder(model, device, precision, cache_dir=settings.cache_dir),
        )
        self._pipeline: Pipeline[ImageInput] = Pipeline(self.loader_threads, lambda: self._embedder.lanes)
        self.runtime_gate = RuntimeGate(self.model_name, settings)  # a built int8 runtime is used only once qualified

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
    resolve_each = staticmethod(resolve_each)

    def classifier(self, taxonomy: Taxonomy) -> TaxonomyClassifier:
        """The compiled taxonomy; its text embeddings are computed on first use only.

        Compiled taxonomies are kept in memory up to ``ZSTAGGER_CLASSIFIER_CACHE_BYTES``; their
        text embeddings are also cached on disk (``ZSTAGGER_CACHE_DIR``), keyed by model and prompts.
        Image sets (:meth:`image_sets`) are resolved then too; an :class:`~zstagger.errors.ExamplesError`
        says why they cannot be.
        """
        # Relative image paths name other files under another base: part of the key.
        self.runtime_gate.check(taxonomy)  # a built int8 runtime needs a passing qualification for it
        key = (taxonomy.fingerprint, taxonomy.images_base() if taxonomy.has_images else None)

        def build() -> TaxonomyClassifier:
            embed: Callable[[Sequence[str]], np.ndarray] = lambda prompts: np.asarray(self.encoder.encode_text(prompts))
            info = self.model_info()
            if self.settings.cache_dir:
                embed = EmbeddingCache(self.settings.cache_dir, self.fingerprint).wrap(embed)  # type: ignore[arg-type]
            return TaxonomyClassifier.build(
                taxonomy, embed, logit_scale=info.logit_scale, logit_bias=info.logit_bias, uses_sigmoid=info.uses_sigmoid,
                image_sets=self.image_sets(taxonomy),
            )

        # Compiled outside any lock the Tagger holds: other taxonomies are compiled and used meanwhile.
        return self._compiled.get(key, build)

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
        interrupted: Callable[[], bool] | None = None,
        frames: bool = False,
        taxonomies: Sequence[str | Taxonomy] | None = None,
    ) -> list[Any]:
        """Tag images (paths, directories, URLs, bytes or PIL images); one result per image, in order.

        Animated GIF/APNG/WebP and video files are judged over their sampled frames
        (:mod:`zstagger.media`); ``frames=True`` adds each sampled frame's scores to their results.

        ``taxonomies=[...]`` (instead of ``taxonomy``): several taxonomies in one pass, each image
        read and encoded once; one :class:`~zstagger.results.MultiTagResult` per image, holding
        each taxonomy's result (exactly what tagging with it alone gives) under its name.

        An input may be an :class:`~zstagger.images.ImageWithText` (a product photo and its title):
        taxonomies with a ``text_fusion`` fuse the text with the image; their results say
        ``text_used``."""
        return list(self.tag_iter(images, taxonomy, labels=labels, template=template, top_k=top_k, batch_size=batch_size,
                                  job_id=job_id, interrupted=interrupted, frames=frames, taxonomies=taxonomies))

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
        interrupted: Callable[[], bool] | None = None,
        frames: bool = False,
        taxonomies: Sequence[str | Taxonomy] | None = None,
    ) -> Iterator[Any]:
        """Like :meth:`tag`, yielding results as batches finish (constant memory).

        ``batch_size`` overrides the Tagger's for this call (queue workers split a chunk
        so that every lane gets a share). ``job_id``: the queued job these images belong
        to, recorded with them in an embedding store. ``interrupted``: once it returns
        True, images not yet being read are not read; their results are errors of kind
        ``interrupted`` (a queue worker told to stop hands them back to the queue).
        """
        if top_k is not None and top_k < 1:
            raise ConfigurationError(f"top_k must be at least 1, got {top_k}")
        if taxonomies is not None:
            if taxonomy is not None or labels is not None:
                raise ConfigurationError("give taxonomies=[...] alone, not with taxonomy or labels")
            specs = self.resolve_each(taxonomies)
            for spec in specs:
                self.classifier(spec)  # compile (text embeddings) before the first image is read
            listed = expand_prefixes(iter_inputs(images), self.image_policy, page_size=self.settings.source_page_size)
            for refs, embeds, errors in self.embed_batches(listed, batch_size, job_id=job_id,
                                                           interrupted=interrupted, media=True):
                yield from self.results_each(specs, refs, embeds, errors, top_k, frames=frames, job_id=job_id)
            return
        spec = self.resolve(taxonomy, labels, template)
        self.classifier(spec)  # compile (text embeddings) before the first image is read
        inputs = expand_prefixes(iter_inputs(images), self.image_policy, page_size=self.settings.source_page_size)
        for refs, embeds, errors in self.embed_batches(inputs, batch_size, job_id=job_id,
                                                       interrupted=interrupted, media=True):
            yield from self.results(spec, refs, embeds, errors, top_k, frames=frames, job_id=job_id)

    # -- animations and videos (zstagger.media): the loader set them aside, judged here in input order --

    def _results_with_media(self, spec: Taxonomy, refs: Sequence[ImageInput], embeds: np.ndarray | None,
                            found: Sequence[Any], top_k: int | None, frames: bool, job_id: str = "",
                            frame_gate: Callable[[int], Any] | None = None) -> list[TagResult]:
        # Media have no row in embeds: scored as errors first, then replaced by their own results.
        out = self.results(spec, refs, embeds, _stills(found), top_k)
        for i, aside in enumerate(found):
            if isinstance(aside, SetAside):
                out[i] = self.tag_media(aside.value, describe(refs[i]), spec, top_k=top_k, frames=frames, job_id=job_id,
                                        record=aside.keep, frame_gate=frame_gate, text=_text_of(refs[i]))
        return out

    @property
    def media_options(self) -> MediaOptions:
        """How animations and videos are read and sampled (settings; video frames converted at the
        size the model's preprocessing keeps, as JPEGs are decoded, unless preprocessing is exact)."""
        if self._media_options is None:
            self._media_options = MediaOptions.from_settings(self.settings, self.decode_size)
        return self._media_options

    @media_options.setter
    def media_options(self, options: MediaOptions) -> None:
        self._media_options = options

    def tag_media(self, source: MediaSource, name: str, taxonomy: Taxonomy, *, top_k: int | None = None,
                  frames: bool = False, text: str | None = None, job_id: str = "",
                  record: Callable[[ImageSighting], None] | None = None,
                  frame_gate: Callable[[int], Any] | None = None) -> TagResult:
        """One animation or video's result (:func:`zstagger.media.tag_media` with this Tagger's model).

        ``text``: what it came with (a product title), fused with its frames as the taxonomy says.
        With an embedding store: the frames judged are kept there (by the content's SHA-256), and
        media whose frames it keeps, sampled with the same settings, are judged from them without
        decoding (:func:`zstagger.media.rejudge_media`), as a stored image is not decoded again.
        ``record``: where the stream being tagged takes what is to be recorded (in its order);
        without it, the store is written at once. ``frame_gate(n)``: a context held while ``n``
        frames are embedded (the HTTP service counts them against its admission limit)."""
        return self.tag_media_each(source, name, [taxonomy], top_k=top_k, frames=frames, text=text, job_id=job_id,
                                   record=record, frame_gate=frame_gate)[0]

    def tag_media_each(self, source: MediaSource, name: str, taxonomies: Sequence[Taxonomy], *, top_k: int | None = None,
                       frames: bool = False, text: str | None = None, job_id: str = "",
                       record: Callable[[ImageSighting], None] | None = None,
                       frame_gate: Callable[[int], Any] | None = None) -> list[TagResult]:
        """:meth:`tag_media` for several taxonomies: decoded and embedded once, one result each."""
        judged_by = [(taxonomy, self.classifier(taxonomy), self.provenance(taxonomy)) for taxonomy in taxonomies]
        vector = self.text_embeddings([text])[0] if text is not None else None
        options = self.media_options
        store = self._route.recorder
        if store is None or not hasattr(store, "get_media"):
            return tag_media_each(source, name, judged_by, self._frame_embedder(False, frame_gate), options, top_k, frames,
                                  vector)
        try:
            key = EmbeddingKey(media_digest(source), self.fingerprint or self.encoder.fingerprint, self.preprocessing)
        except ImageLoadError as exc:
            return [TagResult.failed(name, taxonomy.name, exc.kind, exc.message, exc.transient, provenance)
                    for taxonomy, _, provenance in judged_by]
        stored = store.get_media(key)
        if stored is not None and vector is None and stored.sampling == sampling_signature(options, stored.kind):
            again = [rejudge_media(stored, name, taxonomy, classifier, options, provenance, top_k, frames)
                     for taxonomy, classifier, provenance in judged_by]
            if all(result is not None for result in again):
                self._figures.add(hits=1)
                self._record_media(store, record, ImageSighting(key, name, job_id, None))
                return again  # type: ignore[return-value]
        kept: list[MediaRecord] = []
        results = tag_media_each(source, name, judged_by, self._frame_embedder(True, frame_gate), options, top_k, frames,
                                 vector, keep=kept.append)
        if kept:
            self._figures.add(misses=1)
            self._record_media(store, record, ImageSighting(key, name, job_id, None, kept[0]))
        return results

    def _record_media(self, store: Any, record: Callable[[ImageSighting], None] | None, sighting: ImageSighting) -> None:
        if record is not None:
            record(sighting)
        else:
            self._figures.add(unrecorded=store.record([sighting], self.model_name))

    def media_scores(self, source: MediaSource, taxonomy: Taxonomy) -> Any:
        """An animation's or video's aggregated scores over all its sampled frames (no early exit):
        the classifier's scores of one row, as evaluation and calibration judge a media item
        (:func:`zstagger.media.score_media`). Raises ImageLoadError for the file's problems."""
        return score_media(source, taxonomy, self.classifier(taxonomy), self._frame_embedder(False), self.media_options)

    def rejudge_media(self, record: MediaRecord, name: str, taxonomy: Taxonomy, *, top_k: int | None = None,
                      frames: bool = False, source: str = "image", early_exit: bool = True) -> TagResult | None:
        """The result of an animation or video from the frames an embedding store kept of it (None:
        this taxonomy would judge frames past where the kept judgement stopped early).
        ``early_exit=False``: every kept frame judged (a long video's ranges, joined)."""
        return rejudge_media(record, name, taxonomy, self.classifier(taxonomy), self.media_options,
                             self.provenance(taxonomy, source), top_k, frames, early_exit)

    def judge_range(self, source: MediaSource, taxonomy: Taxonomy, start: float, end: float | None) -> MediaRecord | None:
        """The frames of one time range of a long video, judged and kept (:func:`zstagger.media.judge_range`);
        :func:`zstagger.media.merge_records` then :meth:`rejudge_media` make the whole video's result."""
        return judge_range(source, self.classifier(taxonomy), self._frame_embedder(True), self.media_options, start, end)

    def embed_frames(self, pictures: Sequence[Image.Image]) -> np.ndarray:
        """Unit embeddings of decoded frames, one row each, through the loader threads and encoder
        lanes (no image cache: frames are not images anyone will read again)."""
        out = []
        for _, embeds, errors in self.embed_batches(pictures, max(1, len(pictures)), route=NO_CACHE):
            problem = next((e for e in errors if e is not None), None)
            if problem is not None:
                raise problem
            out.append(embeds)
        return np.concatenate(out)

    def _frame_embedder(self, stored: bool, gate: Callable[[int], Any] | None = None
                        ) -> Callable[[Sequence[Image.Image]], np.ndarray]:
        """:meth:`embed_frames`; ``stored``: rounded to fp16, the form the embedding store keeps, so
        that a judgement made again from the store scores exactly what this one scores; ``gate``:
        each batch embedded inside ``gate(len(batch))``."""

        def embed(pictures: Sequence[Image.Image]) -> np.ndarray:
            if gate is None:
                vectors = self.embed_frames(pictures)
            else:
                with gate(len(pictures)):
                    vectors = self.embed_frames(pictures)
            return to_fp16(vectors).astype(np.float32) if stored else vectors

        return embed

    def results(
        self,
        taxonomy: Taxonomy,
        refs: Sequence[ImageInput],
        embeds: np.ndarray | None,
        errors: Sequence[ImageLoadError | None],
        top_k: int | None = None,
        source: str = "image",
        *,
        frames: bool = False,
        job_id: str = "",
        frame_gate: Callable[[int], Any] | None = None,
    ) -> list[TagResult]:
        """Result records for one batch: ``embeds`` has a row for each ref whose error is None.
        An animation or video the loader set aside (a :class:`~zstagger.pipeline.SetAside` of its
        :class:`~zstagger.media.MediaSource` in place of its error) is judged now, over its frames (``frames``: with each one's scores).

        The one place where embeddings become :class:`TagResult`s (tagging, the HTTP
        service's micro-batches, anything scoring stored embeddings; ``source="store"``
        marks results scored from stored embeddings in their provenance). :meth:`result_lines`
        is the same as JSON lines, for millions of rows.
        """
        if any(isinstance(e, SetAside) for e in errors):
            return self._results_with_media(taxonomy, refs, embeds, errors, top_k, frames, job_id, frame_gate)
        compiled = self.classifier(taxonomy)
        provenance = self.provenance(taxonomy, source)
        texts = self.input_texts(refs, errors)
        done = iter(compiled.classify(embeds, top_k, self.explain, texts) if embeds is not None else [])
        fused = taxonomy.text_fusion is not None
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
                explanation=[LabelExplanation.model_validate(entry) for entry in c.explanation]
                if c.explanation is not None else None,
                text_used=fused if isinstance(ref, ImageWithText) else None,
                facets=c.facets, category=c.category,
            ))
        return out

    def results_each(
        self, taxonomies: Sequence[Taxonomy], refs: Sequence[ImageInput], embeds: np.ndarray | None,
        errors: Sequence[ImageLoadError | None], top_k: int | None = None, source: str = "image", *, frames: bool = False,
        job_id: str = "", frame_gate: Callable[[int], Any] | None = None,
    ) -> list[MultiTagResult]:
        """:meth:`results` for several taxonomies: the same embeddings scored against each (animations
        and videos decoded and embedded once), one :class:`MultiTagResult` per image."""
        each = [self.results(spec, refs, embeds, _stills(errors), top_k, source) for spec in taxonomies]
        out = [MultiTagResult(image=describe(ref), taxonomies={spec.name: results[i] for spec, results in zip(taxonomies, each)})
               for i, ref in enumerate(refs)]
        for i, aside in enumerate(errors):
            if isinstance(aside, SetAside):
                media = self.tag_media_each(aside.value, describe(refs[i]), taxonomies, top_k=top_k, frames=frames,
                                            text=_text_of(refs[i]), job_id=job_id, record=aside.keep, frame_gate=frame_gate)
                out[i] = MultiTagResult(image=out[i].image, taxonomies={spec.name: r for spec, r in zip(taxonomies, media)})
        return out

    # -- an input's text (a product title): embedded by the text tower, once per distinct text --

    def input_texts(self, refs: Sequence[ImageInput], errors: Sequence[Any]) -> InputTexts | None:
        """The texts of a batch's images that have an embedding row (None when none brought text)."""
        rows, texts, row = [], [], 0
        for ref, error in zip(refs, errors):
            if error is not None:
                continue
            if isinstance(ref, ImageWithText):
                rows.append(row)
                texts.append(ref.text)
            row += 1
        if not rows:
            return None
        return InputTexts(np.asarray(rows, dtype=np.int64), self.text_embeddings(texts))

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """Unit embeddings (N, D) of texts by the model's text tower; each distinct text is embedded
        once in this Tagger's life (the last :data:`TEXT_CACHE_ENTRIES` are kept, by hash)."""
        keys = [hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest() for text in texts]
        with self._lock:
            missing = {key: text for key, text in zip(keys, texts) if key not in self._text_vectors}
        if missing:
            vectors = normalize(np.asarray(self.encoder.encode_text(list(missing.values())), dtype=np.float32))
        with self._lock:
            if missing:
                self._text_vectors.update(zip(missing, vectors))
            found = np.stack([self._text_vectors[key] for key in keys])
            while len(self._text_vectors) > TEXT_CACHE_ENTRIES:
                self._text_vectors.popitem(last=False)
        return found

    def result_lines(
        self, taxonomy: Taxonomy, names: Sequence[str], embeds: np.ndarray, top_k: int | None = None, source: str = "image"
    ) -> list[str]:
        """``[r.to_json() for r in self.results(...)]`` for images that all have an embedding,
        written straight from the arrays (no result objects): re-tagging a stored catalogue."""
        compiled = self.classifier(taxonomy)
        batch = compiled.classify_batch(embeds, top_k, self.explain)
        return format_results(names, taxonomy.name, compiled.names, batch.ranked, batch.scores, batch.cosines, batch.tags,
                              batch.verdicts, provenance=self.provenance(taxonomy, source), matches=batch.matches,
                              explanations=batch.explanations, facets=batch.facets, categories=batch.categories)

    def provenance(self, taxonomy: Taxonomy, source: str = "image") -> Provenance:
        """What this Tagger's results with ``taxonomy`` record about how they were made."""
        return Provenance(model=self.model_name, model_fingerprint=self.fingerprint, taxonomy_version=taxonomy.version,
                          taxonomy_fingerprint=taxonomy.fingerprint, preprocessing=self.preprocessing, source=source,
                          **self.runtime_gate.provenance(taxonomy))

    # -- embedding (the embedder's stages, scheduled by the pipeline) --------------------

    def embed_batches(
        self, images: Iterable[ImageInput], batch_size: int | None = None, *, route: CacheRoute | None = None,
        job_id: str = "", interrupted: Callable[[], bool] | None = None, media: bool = False,
    ) -> Iterator[tuple[list[ImageInput], np.ndarray | None, list[ImageLoadError | None]]]:
        """Load, preprocess and encode images in batches, keeping every stage busy (:mod:`zstagger.pipeline`).

        Yields ``(refs, embeddings, errors)`` per batch, in input order: ``embeddings`` has
        one row per ref whose error is None (None when no image of the batch could be read).
        ``route``: where images are looked up and kept (default: the tagger's own image
        cache, whose hits and misses :meth:`cache_stats` counts). An embedding store as the
        tagger's own cache records the images with ``job_id`` (see the module docstring).
        ``interrupted``: see :meth:`tag_iter`. ``media``: animations and videos are not read
        as images; their place in ``errors`` holds a :class:`~zstagger.pipeline.SetAside` of
        their :class:`~zstagger.media.MediaSource` (no embedding row), for the caller to judge.
        """
        route = route or self._route
        own = route is self._route
        sightings = self._embedder.sighting_buffer(route, self._figures if own else None)
        stages = self._embedder.stages(route, job_id=job_id, sightings=sightings, figures=self._figures if own else None)
        if media:
            stages = MediaAside(stages)
        if interrupted is not None:
            stages = StopReading(stages, interrupted)
        stages = TextAside(stages, self.settings.max_text_chars)
        try:
            if sightings is None:
                yield from self._pipeline.run(images, stages, batch_size or self.batch_size)
                return
            # The store records a stream's images in input order, whichever lane finishes first:
            # each input carries its place, and a batch's images are released once it has been used.
            # Media set aside are recorded by whoever judges them (before the next batch is asked
            # for), through ``keep``, in their place.
            for numbered, embeds, errors in self._pipeline.run(enumerate(images), Numbered(stages),
                                                               batch_size or self.batch_size):
                for aside in errors:
                    if isinstance(aside, SetAside):
                        aside.keep = functools.partial(_keep_in_order, sightings, aside.order)
                yield [ref for _, ref in numbered], embeds, errors
                sightings.release(numbered[-1][0] + 1)
        finally:
            if sightings is not None:
                sightings.flush()

    def stages(self, job_id: str = "", *, media: bool = False) -> EmbedStages | MediaAside:
        """The embedder's two stages through the tagger's own cache, as a scheduler runs them
        (the HTTP service's micro-batcher): images are recorded as each batch is embedded.
        ``media``: animations and videos are set aside (see :meth:`embed_batches`)."""
        stages = self._embedder.stages(self._route, job_id=job_id, figures=self._figures)
        return TextAside(MediaAside(stages) if media else stages, self.settings.max_text_chars)

    def prepare(self, ref: ImageInput) -> Prepared | ImageLoadError:
        """``stages().prepare``: in a loader thread, the cached embedding, model-ready pixels, or the error."""
        return self.stages().prepare(ref)

    def embed_prepared(self, ready: Sequence[Prepared], *, job_id: str = "", route: CacheRoute | None = None) -> np.ndarray:
        """``stages(job_id).embed``: embeddings for images from :meth:`prepare`, one row each, in order.
        ``route``: another than the tagger's own (``NO_CACHE``: pixels made here, kept nowhere)."""
        if route is not None and route is not self._route:
            return self._embedder.embed(ready, route, job_id=job_id).vectors
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



def _stills(errors: Sequence[Any]) -> list[Any]:
    """A batch's errors with its media (set aside, no embedding row) as placeholder errors."""
    return [ImageLoadError("media", "") if isinstance(e, SetAside) else e for e in errors]


def _text_of(ref: ImageInput) -> str | None:
    return ref.text if isinstance(ref, ImageWithText) else None


def _keep_in_order(sightings: Any, order: int | None, sighting: ImageSighting) -> None:
    sightings.add([sighting], [order])
