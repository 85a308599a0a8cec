"""Loading a CLIP-family checkpoint and encoding texts and images with it.

:class:`ClipEncoder` wraps any model that transformers'
``AutoModelForZeroShotImageClassification`` loads (CLIP, SigLIP, SigLIP 2, ALIGN, AltCLIP,
Chinese-CLIP...). It returns L2-normalised float32 embeddings and the model's logit scale
and bias; everything about labels and thresholds lives elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers

from ..errors import ConfigurationError, ModelLoadError, ModelNotFoundError
from ..settings import DEFAULT_MODEL, DEVICES, PRECISIONS
from .locate import hub_reachable, locate, model_fingerprint, not_found_offline
from .preprocess import Preprocessor, UnsupportedProcessor

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    if device not in DEVICES and not device.startswith("cuda:"):
        raise ConfigurationError(f"unknown device {device!r}: use one of {', '.join(DEVICES)}")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigurationError("--device cuda was requested but PyTorch sees no CUDA GPU; use --device cpu or auto")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigurationError("--device mps was requested but MPS is not available; use --device cpu or auto")
    return torch.device(device)


def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 matmuls natively (AVX512-BF16 or AMX).

    Without them oneDNN emulates bf16 and it is slower than fp32, so ``auto`` keeps fp32.
    """
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on CPUs with native bf16, fp16 on CUDA and MPS, otherwise fp32."""
    if precision not in PRECISIONS:
        raise ConfigurationError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return _DTYPES[precision]
    if device.type in ("cuda", "mps"):
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def _features(output) -> torch.Tensor:
    # transformers 4.x returns the projected tensor; 5.x a ModelOutput whose pooler_output holds it.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@dataclass
class ClipEncoder:
    """A loaded CLIP-family model: texts and images in, normalised embeddings out."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    image_processor: object
    device: torch.device
    dtype: torch.dtype
    logit_scale: float
    logit_bias: float | None
    uses_sigmoid: bool
    text_padding: str
    text_max_length: int
    fingerprint: str

    def __post_init__(self) -> None:
        try:
            self.preprocessor: Preprocessor | None = Preprocessor.from_hf(self.image_processor)
        except (UnsupportedProcessor, KeyError, TypeError) as exc:
            log.warning("%s: image processor options not reproduced by the fast path (%s); using it directly", self.name, exc)
            self.preprocessor = None
        # A fast tokenizer's settings (padding, truncation) are set on a shared Rust object per
        # call: texts encoded from several threads at once (label sets compiled side by side)
        # take turns to tokenize; the forward passes run side by side.
        self._tokenize_lock = threading.Lock()
        if self.preprocessor is not None:
            scale, shift = self.preprocessor.affine()
            self._scale = torch.from_numpy(scale).view(1, 3, 1, 1).to(self.device)
            self._shift = torch.from_numpy(shift).view(1, 3, 1, 1).to(self.device)

    # -- loading ----------------------------------------------------------------------

    @classmethod
    def load(cls, model: str = DEFAULT_MODEL, device: str = "auto", precision: str = "auto") -> ClipEncoder:
        """Load from a local directory or a Hugging Face Hub id (cache first, then the Hub)."""
        from transformers import AutoModelForZeroShotImageClassification, AutoProcessor
        from transformers.utils import logging as hf_logging

        dev = resolve_device(device)
        dtype = resolve_precision(precision, dev)
        hf_logging.disable_progress_bar()
        source = locate(model)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # e.g. "requires torchvision, falling back": not the user's concern
        try:
            # In reduced precision the weights are cast tensor by tensor while loading (one
            # copy in memory, never fp32 + bf16 at once), when the checkpoint's fp32 logit
            # scale can be read on its own: exp() of a bf16-rounded log-scale is ~1% off.
            exact = _exact_scalars(source) if dtype != torch.float32 else {}
            load_dtype = dtype if exact is not None else torch.float32
            hf_model = _from_pretrained(AutoModelForZeroShotImageClassification, source, dtype=load_dtype)
            processor = _from_pretrained(AutoProcessor, source)
        except ModelNotFoundError:
            raise
        except Exception as exc:  # a damaged checkpoint raises anything (safetensors' own errors included)
            raise ModelLoadError(
                f"{model} was found but could not be loaded as a zero-shot image classification model "
                f"(CLIP, SigLIP, ALIGN, ...): {exc}"
            ) from None
        finally:
            hf_logging.set_verbosity(verbosity)
        hf_model.eval().requires_grad_(False)
        scale, bias = _logit_scale_and_bias(hf_model, model, exact or {})
        # The whole model runs in one precision, the text tower too: text embeddings in bf16
        # stay at cosine > 0.9999 to fp32, and one copy of the weights stays in memory.
        hf_model.to(device=dev, dtype=dtype)
        model_type = hf_model.config.model_type
        text_cfg = getattr(hf_model.config, "text_config", hf_model.config)
        max_len = int(getattr(text_cfg, "max_position_embeddings", 77))
        siglip = "siglip" in model_type
        return cls(
            name=model,
            model=hf_model,
            tokenizer=processor.tokenizer,
            image_processor=processor.image_processor,
            device=dev,
            dtype=dtype,
            logit_scale=scale,
            logit_bias=bias,
            # The HF pipeline uses the sigmoid for SigLIP-family models and softmax otherwise.
            uses_sigmoid=siglip,
            # SigLIP was trained on fixed-length (64) padded text and pools the last token.
            text_padding="max_length" if siglip else "longest",
            text_max_length=64 if siglip else max_len,
            fingerprint=model_fingerprint(source) or _config_hash(hf_model),
        )

    # -- encoding ---------------------------------------------------------------------

    @torch.inference_mode()
    def encode_text(self, prompts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Embed prompts: float32 tensor (len(prompts), dim), rows L2-normalised, on CPU."""
        chunks = []
        for start in range(0, len(prompts), batch_size):
            batch = list(prompts[start : start + batch_size])
            with self._tokenize_lock:
                tokens = self.tokenizer(
                    batch, padding=self.text_padding, truncation=True, max_length=self.text_max_length, return_tensors="pt"
                )
            tokens = tokens.to(self.device)
            feats = _features(self.model.get_text_features(**tokens)).float()
            chunks.append(torch.nn.functional.normalize(feats, dim=-1).cpu())
        if not chunks:
            return torch.empty(0, 0)
        return torch.cat(chunks)

    def preprocess(self, image, exact: bool = True) -> np.ndarray:
        """RGB PIL image -> model-ready pixels (uint8 HWC on the fast path; see Preprocessor)."""
        if self.preprocessor is not None:
            return self.preprocessor(image, exact)
        out = self.image_processor(images=[image], return_tensors="np")
        return out["pixel_values"][0].astype(np.float32)

    @property
    def min_decode_size(self) -> int | None:
        return self.preprocessor.min_decode_size if self.preprocessor is not None else None

    @torch.inference_mode()
    def encode_images(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Embed a batch from :meth:`preprocess` (stacked): float32 (batch, dim), normalised, on CPU."""
        x = torch.as_tensor(pixels)
        if x.dtype == torch.uint8:  # fast path: (B, H, W, 3) uint8 -> normalised (B, 3, H, W)
            x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
            x = x * self._scale + self._shift
        else:
            x = x.to(self.device)
        feats = _features(self.model.get_image_features(pixel_values=x.to(self.dtype)))
        return torch.nn.functional.normalize(feats.float(), dim=-1).cpu()

    # -- lanes ----------------------------------------------------------------------------

    def plan_lanes(self, lanes: int = 0) -> int:
        """How many batches to encode at once (``lanes``, or 0 to choose), and torch's threads for each.

        On CPU, several single-threaded forwards side by side beat one forward spread
        over every core (no synchronisation between threads; measured ~10% more
        throughput on 2 cores), and decoding slots in between them. The cores torch was
        given (``torch.get_num_threads()``) are shared out among the lanes.
        """
        if self.device.type != "cpu":
            return 1
        cores = _cpu_budget()
        lanes = lanes or min(8, cores)
        torch.set_num_threads(max(1, cores // lanes))
        return lanes


_cores: int | None = None


def _cpu_budget() -> int:
    """torch's thread count before any encoder split it into lanes (read once per process)."""
    global _cores
    if _cores is None:
        _cores = torch.get_num_threads()
    return _cores


_SCALARS = ("logit_scale", "logit_bias", "temperature")


def _logit_scale_and_bias(model, name: str, exact: dict[str, float]) -> tuple[float, float | None]:
    def value(attr: str) -> float | None:
        if attr in exact:
            return exact[attr]
        param = getattr(model, attr, None)
        return float(param.detach().float().reshape(-1)[0]) if param is not None else None

    bias = value("logit_bias")
    if value("logit_scale") is not None:
        return math.exp(value("logit_scale")), bias  # type: ignore[arg-type]
    if value("temperature") is not None:  # ALIGN divides by a temperature
        return 1.0 / value("temperature"), bias  # type: ignore[operator]
    raise ModelLoadError(f"{name} has no logit_scale or temperature: it is not a CLIP-style contrastive model")


def _exact_scalars(source: str) -> dict[str, float] | None:
    """The fp32 logit scale/bias/temperature straight from the safetensors file, or None."""
    try:
        from safetensors import safe_open
        from transformers.utils import cached_file

        index = cached_file(source, "model.safetensors.index.json", local_files_only=True,
                            _raise_exceptions_for_missing_entries=False)
        if index:
            weight_map = json.loads(Path(index).read_text())["weight_map"]
            files = {weight_map[k] for k in _SCALARS if k in weight_map}
        else:
            files = {"model.safetensors"}
        found: dict[str, float] = {}
        for filename in files:
            path = cached_file(source, filename, local_files_only=True, _raise_exceptions_for_missing_entries=False)
            if not path:
                return None
            with safe_open(path, framework="pt") as fh:
                for key in _SCALARS:
                    if key in fh.keys():
                        found[key] = float(fh.get_tensor(key).float().reshape(-1)[0])
        return found if ("logit_scale" in found or "temperature" in found) else None
    except Exception:  # any surprise: load in fp32 and read the values from the model instead
        return None


# -- finding the checkpoint -------------------------------------------------------------


def _from_pretrained(loader, source: str, **kwargs):
    """Cache (or local dir) first and fast; only then the Hub, if it can be reached at all."""
    if "dtype" in kwargs and int(transformers.__version__.split(".")[0]) < 5:
        kwargs["torch_dtype"] = kwargs.pop("dtype")  # the 4.x name
    try:
        return loader.from_pretrained(source, local_files_only=True, **kwargs)
    except OSError:
        if os.path.isdir(source):
            raise
    if not hub_reachable():
        raise not_found_offline(source)
    try:
        return loader.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise ModelNotFoundError(
            f"model {source!r} could not be downloaded from the Hugging Face Hub: {str(exc).splitlines()[0]}\n"
            "Check the model id, or pass a local directory with --model /path/to/model (or ZSTAGGER_MODEL)."
        ) from None


def _config_hash(model) -> str:
    """Fallback fingerprint when the checkpoint's files cannot be found (should not happen)."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]
