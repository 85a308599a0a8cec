"""A built OpenVINO runtime used like :class:`~zstagger.engine.model.ClipEncoder`.

Same interface (``preprocess``, ``encode_images``, ``encode_text``, ``fingerprint``,
``logit_scale``, ``logit_bias``, ``uses_sigmoid``, ``min_decode_size``, ``device``), none of
torch or transformers imported: pixels are prepared with Pillow and numpy, prompts with
``tokenizers``. The vision tower takes the uint8 (batch, height, width, 3) pixels of
:class:`~zstagger.engine.preprocess.Preprocessor` and returns L2-normalised embeddings (the
normalisation and the pixel affine were exported with it).

Lanes: the vision tower is compiled with one CPU stream per lane (``NUM_STREAMS``), the
cores shared among them; each lane thread runs its own infer request, so the tagger's
parallel batches run side by side as they do on torch. The text tower is compiled at the
first prompt that is not in the text cache, so a start whose taxonomy is cached compiles
only the vision tower.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..engine.preprocess import Preprocessor
from ..errors import ConfigurationError, ModelLoadError
from .manifest import RuntimeManifest, read_manifest, runtime_fingerprint
from .tokenizer import TextTokenizer

log = logging.getLogger(__name__)


class Embeddings(np.ndarray):
    """float32 rows, as numpy; ``.numpy()`` as on the torch tensors ClipEncoder returns."""

    def numpy(self) -> np.ndarray:
        return self.view(np.ndarray)


def _rows(array: np.ndarray) -> Embeddings:
    return np.ascontiguousarray(array, dtype=np.float32).view(Embeddings)


@dataclass(frozen=True)
class RuntimeDevice:
    """Where a built runtime runs; ``type`` reads like a torch device's."""

    type: str = "cpu"
    runtime: str = "openvino"

    def __str__(self) -> str:
        return f"{self.runtime}:{self.type}"


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class OpenVinoEncoder:
    """A built runtime directory, compiled for the CPU."""

    runtime = "openvino"

    def __init__(self, directory: str | Path, manifest: RuntimeManifest, name: str | None = None, lanes: int = 0,
                 cache_dir: str | None = None):
        try:
            import openvino as ov
        except ImportError as exc:
            from ..extras import missing

            raise missing(exc.name or "openvino") from None
        self.directory = Path(directory).expanduser()
        self.manifest = manifest
        self.name = name or str(directory)
        self.precision = manifest.precision
        self.dtype = manifest.precision  # what health reports and benchmarks print as the precision
        self.device = RuntimeDevice()
        self.logit_scale = manifest.logit_scale
        self.logit_bias = manifest.logit_bias
        self.uses_sigmoid = manifest.uses_sigmoid
        self.fingerprint = runtime_fingerprint(self.directory)
        p = manifest.preprocessing
        self.preprocessor: Preprocessor | None = Preprocessor(
            p.shortest_edge, p.resize_to, p.crop, p.resample, p.rescale_factor, p.mean, p.std
        )
        self._ov = ov
        self._core = ov.Core()
        if cache_dir:
            # OpenVINO's compiled-model cache: compiling ViT-B/32 takes seconds, loading it from here a fraction.
            self._core.set_property({"CACHE_DIR": str(Path(cache_dir).expanduser() / "openvino")})
        self._local = threading.local()
        self._text_lock = threading.Lock()
        self._text = None
        self._tokenizer: TextTokenizer | None = None
        self.lanes = 0
        self._vision = None
        self._requested_lanes = lanes
        self._compile_vision(lanes)

    @classmethod
    def load(cls, model: str, lanes: int = 0, cache_dir: str | None = None) -> OpenVinoEncoder:
        return cls(model, read_manifest(model), name=model, lanes=lanes, cache_dir=cache_dir)

    # -- compiling --------------------------------------------------------------------

    def _config(self, streams: int, threads: int) -> dict:
        config: dict = {"NUM_STREAMS": str(streams), "INFERENCE_NUM_THREADS": str(threads)}
        if self.precision == "fp32":  # CPUs with bf16 would otherwise run the float ops in bf16
            config["INFERENCE_PRECISION_HINT"] = "f32"
        return config

    def _compile(self, role: str, streams: int):
        """Compile from the file (with a cache directory, a compiled model cached before is
        loaded without reading the IR at all)."""
        path = self.directory / self.manifest.files[role]
        if not path.is_file():
            raise ModelLoadError(f"{self.name}: the {role} model {path.name} is missing; rebuild it with `zstagger runtime build`")
        try:
            return self._core.compile_model(str(path), "CPU", self._config(streams, cpu_cores()))
        except Exception as exc:  # a damaged IR: the library's own errors
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelLoadError(f"{self.name}: OpenVINO cannot load the {role} model {path.name} ({first}); "
                                 "rebuild it with `zstagger runtime build`") from None

    def _compile_vision(self, lanes: int) -> None:
        lanes = max(1, min(lanes or min(8, cpu_cores()), 64))
        self._vision = self._compile("vision", lanes)
        self.lanes = lanes
        self._local = threading.local()  # infer requests belong to one compiled model

    def plan_lanes(self, lanes: int) -> int:
        """The tagger's lane plan: one CPU stream per lane (recompiled if another count is asked for)."""
        wanted = max(1, min(lanes or min(8, cpu_cores()), 64))
        if wanted != self.lanes:
            self._compile_vision(wanted)
        return self.lanes

    def _text_model(self):
        with self._text_lock:
            if self._text is None:
                self._tokenizer = TextTokenizer(self.directory / self.manifest.files["tokenizer"], self.manifest.text)
                self._text = self._compile("text", 1)
            return self._text

    # -- encoding ---------------------------------------------------------------------

    def preprocess(self, image: Image.Image, exact: bool = True) -> np.ndarray:
        """RGB PIL image -> uint8 (height, width, 3). Always Pillow's resize (no torch kernel)."""
        return self.preprocessor(image, True)  # type: ignore[misc]

    @property
    def min_decode_size(self) -> int | None:
        return self.preprocessor.min_decode_size if self.preprocessor is not None else None

    def encode_images(self, pixels: np.ndarray) -> Embeddings:
        """A stacked batch from :meth:`preprocess`: float32 (batch, dim), rows normalised."""
        x = np.asarray(pixels)
        if x.dtype != np.uint8 or x.ndim != 4:
            raise ConfigurationError(f"{self.name}: expected uint8 (batch, height, width, 3) pixels, got {x.dtype} {x.shape}")
        request = getattr(self._local, "vision", None)
        if request is None:
            request = self._local.vision = self._vision.create_infer_request()  # type: ignore[union-attr]
        request.infer({0: np.ascontiguousarray(x)})
        return _rows(request.get_output_tensor(0).data.copy())

    def encode_text(self, prompts: Sequence[str], batch_size: int = 64) -> Embeddings:
        """Embed prompts: float32 (len(prompts), dim), rows normalised."""
        model = self._text_model()
        chunks = []
        with self._text_lock:
            request = model.create_infer_request()
            for start in range(0, len(prompts), batch_size):
                tokens = self._tokenizer(prompts[start : start + batch_size])  # type: ignore[misc]
                request.infer(tokens)
                chunks.append(request.get_output_tensor(0).data.copy())
        if not chunks:
            return _rows(np.empty((0, 0), np.float32))
        return _rows(np.concatenate(chunks))
