"""The Python API: ``Tagger(model=...).tag(images, taxonomy=...)``.

A :class:`Tagger` loads the model once, compiles each taxonomy once (text embeddings are
cached in memory and on disk), and tags images in batches: loader threads decode and
preprocess upcoming images while encoder lanes run the model on earlier batches.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice

import numpy as np
import torch

from .classifier import TaxonomyClassifier
from .embedding_cache import EmbeddingCache
from .engine.model import ClipEncoder
from .errors import ConfigurationError, ImageLoadError
from .images import ImageInput, ImagePolicy, describe, iter_inputs, load_image
from .registry import resolve_taxonomy
from .results import LabelScore, TagResult
from .settings import Settings
from .taxonomy import Taxonomy

_PREFETCH_BATCHES = 2
_cores: int | None = None


def _cpu_budget() -> int:
    """torch's thread count before any Tagger split it into lanes (read once per process)."""
    global _cores
    if _cores is None:
        _cores = torch.get_num_threads()
    return _cores


class Tagger:
    """Tags images with a CLIP-family model against taxonomies or ad-hoc labels.

    Arguments left as ``None`` come from the ``ZSTAGGER_*`` environment (see
    :class:`~zstagger.settings.Settings`), then from the defaults.
    ``exact_preprocessing=True`` with ``precision="fp32"`` reproduces the Hugging Face
    pipeline's scores (to ~1e-6); the defaults trade that for ~2.5x the speed on CPU.
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
    ):
        settings = settings or Settings()
        self.settings = settings
        self.batch_size = int(batch_size or settings.batch_size)
        if self.batch_size < 1:
            raise ConfigurationError(f"batch size must be at least 1, got {self.batch_size}")
        self.image_policy = image_policy or ImagePolicy.from_settings(settings)
        self.encoder = ClipEncoder.load(
            model or settings.model, device=device or settings.device, precision=precision or settings.precision
        )
        threads = loader_threads if loader_threads is not None else settings.loader_threads
        self.loader_threads = threads or min(4, os.cpu_count() or 1)
        self.lanes = self._plan_lanes(lanes if lanes is not None else settings.inference_lanes)
        # Unless exact preprocessing is asked for, JPEGs decode at 1/2, 1/4 or 1/8 scale as
        # long as both sides keep twice the model's input size, so the resize that follows
        # still low-pass filters as it would after a full decode.
        self.exact = settings.exact_preprocessing if exact_preprocessing is None else exact_preprocessing
        side = self.encoder.min_decode_size
        self.decode_size = 2 * side if side and not self.exact else None
        self._pool: ThreadPoolExecutor | None = None
        self._encoders: ThreadPoolExecutor | None = None
        self._classifiers: dict[str, TaxonomyClassifier] = {}
        self._lock = threading.Lock()

    # -- taxonomies -------------------------------------------------------------------

    resolve = staticmethod(resolve_taxonomy)

    def classifier(self, taxonomy: Taxonomy) -> TaxonomyClassifier:
        """The compiled taxonomy; its text embeddings are computed on first use only.

        They are also cached on disk (``ZSTAGGER_CACHE_DIR``), keyed by model and prompts.
        """
        with self._lock:
            compiled = self._classifiers.get(taxonomy.fingerprint)
            if compiled is None:
                embed = self.encoder.encode_text
                if self.settings.cache_dir:
                    embed = EmbeddingCache(self.settings.cache_dir, self.encoder.fingerprint).wrap(embed)
                compiled = TaxonomyClassifier.build(
                    taxonomy,
                    embed,
                    logit_scale=self.encoder.logit_scale,
                    logit_bias=self.encoder.logit_bias,
                    uses_sigmoid=self.encoder.uses_sigmoid,
                )
                self._classifiers[taxonomy.fingerprint] = compiled
            return compiled

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
    ) -> list[TagResult]:
        """Tag images (paths, directories, URLs, bytes or PIL images); one result per image, in order."""
        return list(self.tag_iter(images, taxonomy, labels=labels, template=template, top_k=top_k, batch_size=batch_size))

    def tag_iter(
        self,
        images: ImageInput | Iterable[ImageInput],
        taxonomy: str | Taxonomy | None = None,
        *,
        labels: Sequence[str] | None = None,
        template: str | None = None,
        top_k: int | None = None,
        batch_size: int | None = None,
    ) -> Iterator[TagResult]:
        """Like :meth:`tag`, yielding results as batches finish (constant memory).

        ``batch_size`` overrides the Tagger's for this call (queue workers split a chunk
        so that every lane gets a share).
        """
        spec = self.resolve(taxonomy, labels, template)
        if top_k is not None and top_k < 1:
            raise ConfigurationError(f"top_k must be at least 1, got {top_k}")
        self.classifier(spec)  # compile (text embeddings) before the first image is read
        for refs, embeds, errors in self.embed_batches(iter_inputs(images), batch_size):
            yield from self.results(spec, refs, embeds, errors, top_k)

    def results(
        self,
        taxonomy: Taxonomy,
        refs: Sequence[ImageInput],
        embeds: torch.Tensor | None,
        errors: Sequence[ImageLoadError | None],
        top_k: int | None = None,
    ) -> list[TagResult]:
        """Result records for one batch: ``embeds`` has a row for each ref whose error is None.

        The one place where embeddings become :class:`TagResult`s (tagging, the HTTP
        service's micro-batches, anything scoring stored embeddings).
        """
        compiled = self.classifier(taxonomy)
        done = iter(compiled.classify(embeds, top_k) if embeds is not None else [])
        out = []
        for ref, error in zip(refs, errors):
            name = describe(ref)
            if error is not None:
                out.append(TagResult.failed(name, taxonomy.name, error.kind, error.message, error.transient))
                continue
            c = next(done)
            out.append(TagResult(
                image=name,
                taxonomy=taxonomy.name,
                scores=[LabelScore(label=label, score=score, cosine=cos) for label, score, cos in c.scores],
                tags=c.tags,
                verdict=c.verdict,
            ))
        return out

    def _plan_lanes(self, lanes: int) -> int:
        """How many batches to encode at once, and torch's threads for each.

        On CPU, several single-threaded forwards side by side beat one forward spread
        over every core (no synchronisation between threads; measured ~10% more
        throughput on 2 cores), and decoding slots in between them. The cores torch was
        given (``torch.get_num_threads()``) are shared out among the lanes.
        """
        if self.encoder.device.type != "cpu":
            return 1
        cores = _cpu_budget()
        lanes = lanes or min(8, cores)
        torch.set_num_threads(max(1, cores // lanes))
        return lanes

    def embed_batches(
        self, images: Iterable[ImageInput], batch_size: int | None = None
    ) -> Iterator[tuple[list[ImageInput], torch.Tensor | None, list[ImageLoadError | None]]]:
        """Load, preprocess and encode images in batches, keeping every stage busy.

        Decoding runs in the loader threads, ahead of the encoder lanes; up to ``lanes``
        batches are encoded at once. Yields ``(refs, embeddings, errors)`` per batch, in
        input order: ``embeddings`` has one row per ref whose error is None (None when
        no image of the batch could be read).
        """
        loader, encoders = self._pools()
        source = iter(images)
        size = batch_size or self.batch_size
        batches = iter(lambda: list(islice(source, size)), [])
        in_flight: deque[Future] = deque()

        def submit_next() -> None:
            batch = next(batches, None)
            if batch:
                loads = [(ref, loader.submit(self.prepare, ref)) for ref in batch]
                in_flight.append(encoders.submit(self._encode_batch, loads))

        for _ in range(self.lanes + _PREFETCH_BATCHES - 1):
            submit_next()
        while in_flight:
            done = in_flight.popleft()
            submit_next()
            yield done.result()

    def preprocess(self, images: Iterable[ImageInput]) -> list[np.ndarray | ImageLoadError]:
        """Read, decode and preprocess images in the loader threads, without encoding them:
        model-ready pixels, or the error that image met, in input order."""
        loader, _ = self._pools()
        return list(loader.map(self.prepare, images))

    def encode(self, pixels: Sequence[np.ndarray]) -> torch.Tensor:
        """Embed preprocessed images (from :meth:`prepare`) in one forward pass."""
        return self.encoder.encode_images(np.stack(pixels))

    def _encode_batch(
        self, loads: list[tuple[ImageInput, Future]]
    ) -> tuple[list[ImageInput], torch.Tensor | None, list[ImageLoadError | None]]:
        refs, pixels, errors = [], [], []
        for ref, future in loads:
            prepared = future.result()
            refs.append(ref)
            if isinstance(prepared, ImageLoadError):
                errors.append(prepared)
            else:
                errors.append(None)
                pixels.append(prepared)
        embeds = self.encode(pixels) if pixels else None
        return refs, embeds, errors

    def prepare(self, ref: ImageInput) -> np.ndarray | ImageLoadError:
        """Read, decode and preprocess one image (the loader threads' work); never raises."""
        try:
            return self.encoder.preprocess(load_image(ref, self.image_policy, self.decode_size), self.exact)
        except ImageLoadError as exc:
            return exc
        except Exception as exc:  # one odd file must never take the batch down with it
            return ImageLoadError("invalid_image", f"could not process image: {type(exc).__name__}: {exc}")

    def _pools(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.loader_threads, thread_name_prefix="zstagger-load")
                self._encoders = ThreadPoolExecutor(self.lanes, thread_name_prefix="zstagger-encode")
            return self._pool, self._encoders  # type: ignore[return-value]

    def close(self) -> None:
        with self._lock:
            for pool in (self._encoders, self._pool):
                if pool is not None:
                    pool.shutdown(wait=True, cancel_futures=True)
            self._pool = self._encoders = None

    def __enter__(self) -> Tagger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
