"""The Python API: ``Tagger(model=...).tag(images, taxonomy=...)``.

A :class:`Tagger` loads the model once, compiles each taxonomy once (text embeddings are
cached per taxonomy fingerprint), and tags images in batches: a thread pool decodes and
preprocesses upcoming images while the model encodes the current batch.
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
from .engine.model import ClipEncoder
from .errors import ConfigurationError, ImageLoadError
from .images import ImageInput, ImagePolicy, describe, iter_inputs, load_image
from .plugins import resolve_taxonomy
from .results import LabelScore, TagResult
from .settings import Settings
from .taxonomy import Taxonomy

_PREFETCH_BATCHES = 2


class Tagger:
    """Tags images with a CLIP-family model against taxonomies or ad-hoc labels.

    Arguments left as ``None`` come from the ``ZSTAGGER_*`` environment (see
    :class:`~zstagger.settings.Settings`), then from the defaults.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str | None = None,
        precision: str | None = None,
        batch_size: int | None = None,
        loader_threads: int | None = None,
        image_policy: ImagePolicy | None = None,
        settings: Settings | None = None,
    ):
        settings = settings or Settings()
        self.settings = settings
        self.batch_size = int(batch_size or settings.batch_size)
        if self.batch_size < 1:
            raise ConfigurationError(f"batch size must be at least 1, got {self.batch_size}")
        self.image_policy = image_policy or settings.image_policy
        self.encoder = ClipEncoder.load(
            model or settings.model, device=device or settings.device, precision=precision or settings.precision
        )
        threads = loader_threads if loader_threads is not None else settings.loader_threads
        self.loader_threads = threads or min(4, os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None
        self._classifiers: dict[str, TaxonomyClassifier] = {}
        self._lock = threading.Lock()

    # -- taxonomies -------------------------------------------------------------------

    resolve = staticmethod(resolve_taxonomy)

    def classifier(self, taxonomy: Taxonomy) -> TaxonomyClassifier:
        """The compiled taxonomy; its text embeddings are computed on first use only."""
        with self._lock:
            compiled = self._classifiers.get(taxonomy.fingerprint)
            if compiled is None:
                compiled = TaxonomyClassifier.build(
                    taxonomy,
                    self.encoder.encode_text,
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
    ) -> list[TagResult]:
        """Tag images (paths, directories, URLs, bytes or PIL images); one result per image, in order."""
        return list(self.tag_iter(images, taxonomy, labels=labels, template=template, top_k=top_k))

    def tag_iter(
        self,
        images: ImageInput | Iterable[ImageInput],
        taxonomy: str | Taxonomy | None = None,
        *,
        labels: Sequence[str] | None = None,
        template: str | None = None,
        top_k: int | None = None,
    ) -> Iterator[TagResult]:
        """Like :meth:`tag`, yielding results as batches finish (constant memory)."""
        spec = self.resolve(taxonomy, labels, template)
        if top_k is not None and top_k < 1:
            raise ConfigurationError(f"top_k must be at least 1, got {top_k}")
        compiled = self.classifier(spec)
        for refs, embeds, errors in self.embed_batches(iter_inputs(images)):
            done = iter(compiled.classify(embeds, top_k) if embeds is not None else [])
            for ref, error in zip(refs, errors):
                name = describe(ref)
                if error is not None:
                    yield TagResult.failed(name, spec.name, error.kind, error.message, error.transient)
                    continue
                c = next(done)
                yield TagResult(
                    image=name,
                    taxonomy=spec.name,
                    scores=[LabelScore(label=label, score=score, cosine=cos) for label, score, cos in c.scores],
                    tags=c.tags,
                    verdict=c.verdict,
                )

    def embed_batches(
        self, images: Iterable[ImageInput]
    ) -> Iterator[tuple[list[ImageInput], torch.Tensor | None, list[ImageLoadError | None]]]:
        """Load, preprocess and encode images in batches, keeping the decode threads ahead.

        Yields ``(refs, embeddings, errors)`` per batch: ``embeddings`` has one row per
        ref whose error is None, in order (None when the whole batch failed to load).
        """
        pool = self._loader_pool()
        batches = iter(lambda it=iter(images): list(islice(it, self.batch_size)), [])
        queue: deque[list[tuple[ImageInput, Future]]] = deque()

        def submit_next() -> None:
            batch = next(batches, None)
            if batch:
                queue.append([(ref, pool.submit(self._prepare, ref)) for ref in batch])

        for _ in range(_PREFETCH_BATCHES):
            submit_next()
        while queue:
            current = queue.popleft()
            submit_next()
            refs, pixels, errors = [], [], []
            for ref, future in current:
                prepared = future.result()
                refs.append(ref)
                if isinstance(prepared, ImageLoadError):
                    errors.append(prepared)
                else:
                    errors.append(None)
                    pixels.append(prepared)
            embeds = self.encoder.encode_images(np.stack(pixels)) if pixels else None
            yield refs, embeds, errors

    def _prepare(self, ref: ImageInput) -> np.ndarray | ImageLoadError:
        try:
            return self.encoder.preprocess(load_image(ref, self.image_policy))
        except ImageLoadError as exc:
            return exc
        except Exception as exc:  # one odd file must never take the batch down with it
            return ImageLoadError("invalid_image", f"could not process image: {type(exc).__name__}: {exc}")

    def _loader_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.loader_threads, thread_name_prefix="zstagger-load")
            return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Tagger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
