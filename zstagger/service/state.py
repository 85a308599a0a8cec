"""What one server process holds: settings, API keys, the model (loaded in the background),
the micro-batcher and the metrics."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Sequence

from ..errors import ZstaggerError
from ..images import ImageInput
from ..results import MultiTagResult, TagResult
from ..settings import Settings
from ..taxonomy import Taxonomy
from .auth import ApiKeys
from .batching import MicroBatcher, Overloaded
from .bodies import BodyParser
from .errors import ApiError
from .metrics import ServiceMetrics

log = logging.getLogger("zstagger.service")
#: Seconds a medium being judged waits for room for its next batch of frames before it gives up (an error record).
MEDIA_PATIENCE = 30.0


class ServiceState:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.keys = ApiKeys.from_settings(settings)  # a bad key file stops the server at start, not per request
        self.metrics = ServiceMetrics()
        self.bodies = BodyParser()  # large request bodies are parsed in helper processes
        self.tagger = None
        self.batcher: MicroBatcher | None = None
        self.load_error: str | None = None
        self.load_seconds: float | None = None
        self._loader: threading.Thread | None = None

    # -- model ----------------------------------------------------------------------

    def start_loading(self) -> None:
        """Load the model in the background: /healthz answers at once, /readyz once it is loaded."""
        self._loader = threading.Thread(target=self._load, name="zstagger-model-load", daemon=True)
        self._loader.start()
        self.bodies.warm_up()

    def _load(self) -> None:
        started = time.monotonic()
        try:
            from ..tagger import Tagger

            tagger = Tagger(settings=self.settings)
            self.batcher = MicroBatcher(
                tagger.stages(media=True),  # media: set aside, judged over their frames in _results
                batch_size=tagger.batch_size,
                max_wait=self.settings.batch_wait_ms / 1000,
                max_pending=self.settings.max_pending_images,
                lanes=tagger.lanes,
                loader_threads=tagger.loader_threads,
                observe=self.metrics.observe_batch,
                on_frames=self.metrics.media_frames.inc,
            )
            self.tagger = tagger
            self.load_seconds = time.monotonic() - started
            log.info("zstagger: loaded %s in %.1fs; serving", self.settings.model, self.load_seconds)
        except Exception as exc:  # reported by /readyz and every tagging call
            self.load_error = str(exc).splitlines()[0] if isinstance(exc, ZstaggerError) else f"{type(exc).__name__}: {exc}"
            log.error("zstagger: could not load model %s: %s", self.settings.model, self.load_error)

    def ready_tagger(self):
        if self.tagger is not None:
            return self.tagger
        if self.load_error is not None:
            raise ApiError(503, "model_unavailable", f"the model could not be loaded: {self.load_error}")
        raise ApiError(503, "loading", "the model is still loading; retry shortly", headers={"Retry-After": "5"})

    # -- tagging --------------------------------------------------------------------

    async def tag(self, refs: Sequence[ImageInput], taxonomy: Taxonomy | list[Taxonomy], top_k: int | None, *,
                  frames: bool = False) -> list[TagResult] | list[MultiTagResult]:
        """Tag one request's images through the shared micro-batches; results in input order.
        Animations and videos are judged over their frames (``frames``: with each one's scores):
        a medium is admitted as one input, then each batch of its frames as as many images while
        it is embedded (:meth:`MicroBatcher.frames`), so media cannot take the service over.
        A list of taxonomies: each image embedded once, one :class:`MultiTagResult` per image."""
        tagger = self.ready_tagger()
        batcher = self.batcher
        assert batcher is not None
        try:
            batcher.admit(len(refs))
        except Overloaded:
            self.metrics.refused.inc()
            raise ApiError(503, "overloaded",
                           f"the server is busy ({batcher.in_flight} images in flight, limit "
                           f"{self.settings.max_pending_images}, ZSTAGGER_MAX_PENDING_IMAGES); retry shortly",
                           headers={"Retry-After": "1"}) from None
        try:
            # Compiling a taxonomy (its text embeddings, once) and scoring run off the event loop.
            for spec in taxonomy if isinstance(taxonomy, list) else [taxonomy]:
                await asyncio.to_thread(tagger.classifier, spec)
            rows, errors = await batcher.embed(refs)
        finally:
            batcher.release(len(refs))
        results = await asyncio.to_thread(self._results, tagger, taxonomy, refs, rows, errors, top_k, frames)
        for result in results:
            self.metrics.images.labels("error" if result.error else "tagged").inc()  # a MultiTagResult: its input's own error
        return results

    def _results(self, tagger, taxonomy, refs, rows, errors, top_k, frames=False) -> list[TagResult]:
        import numpy as np

        kept = [row for row in rows if row is not None]
        # An animation's or video's frames count against the admission limit a batch at a time, as they are embedded.
        gate = functools.partial(self.batcher.frames, patience=MEDIA_PATIENCE)  # type: ignore[union-attr]
        if isinstance(taxonomy, list):
            return tagger.results_each(taxonomy, refs, np.stack(kept) if kept else None, errors, top_k, frames=frames,
                                       frame_gate=gate)
        return tagger.results(taxonomy, refs, np.stack(kept) if kept else None, errors, top_k, frames=frames,
                              frame_gate=gate)

    def close(self) -> None:
        self.bodies.close()
        if self.batcher is not None:
            self.batcher.close()
        if self.tagger is not None:
            self.tagger.close()
