"""Model runtimes behind one small interface: what the model loader calls.

- torch: a Hugging Face checkpoint (directory or Hub id), :class:`~zstagger.engine.model.ClipEncoder`;
- openvino: a directory built by ``zstagger runtime build`` (:mod:`.build`), loaded by
  :class:`~zstagger.runtimes.openvino.OpenVinoEncoder` without torch or transformers.

:func:`load_encoder` picks one from the model reference; :func:`model_fingerprint` keys
cached embeddings for either without loading anything; :func:`runtime_identity` names the
runtime and precision for provenance; :mod:`.qualification` holds the records that say a
built runtime agrees with its source model on a taxonomy, and the gate that refuses an
int8 build without one. Importing this package imports neither torch nor transformers.
"""

from __future__ import annotations

from ..engine import locate as _locate
from .manifest import MANIFEST_NAME, RuntimeManifest, is_runtime_dir, read_manifest, runtime_fingerprint


def load_encoder(model: str, device: str = "auto", precision: str = "auto", lanes: int = 0, cache_dir: str | None = None):
    """The encoder for ``model``: a built runtime directory (OpenVINO, on the CPU; ``precision``
    is the build's, so only ``auto`` or the build's own is accepted; compiled models are cached
    under ``cache_dir``) or a checkpoint (torch)."""
    if is_runtime_dir(model):
        from ..errors import ConfigurationError
        from .openvino import OpenVinoEncoder

        manifest = read_manifest(model)
        if device not in ("auto", "cpu"):
            raise ConfigurationError(f"{model} is an OpenVINO runtime built for the CPU; use --device cpu or auto")
        if precision not in ("auto", manifest.precision):
            raise ConfigurationError(
                f"{model} is a {manifest.precision} build; --precision {precision} does not apply (leave it at auto)"
            )
        return OpenVinoEncoder(model, manifest, name=model, lanes=lanes, cache_dir=cache_dir)
    try:
        from ..engine.model import ClipEncoder
    except ImportError as exc:  # a producer-only install: no torch, no transformers
        from ..extras import missing

        raise missing(exc.name or "torch") from None
    return ClipEncoder.load(model, device=device, precision=precision)


def model_fingerprint(model: str) -> str | None:
    """:func:`zstagger.engine.locate.model_fingerprint`, or a built runtime's own fingerprint."""
    if is_runtime_dir(model):
        return runtime_fingerprint(model)
    return _locate.model_fingerprint(model)


def check_available(model: str) -> None:
    """Raise a one-line error unless ``model`` can be loaded: a built runtime's manifest is
    read and checked; a checkpoint as :func:`zstagger.engine.locate.check_available` does."""
    if is_runtime_dir(model):
        read_manifest(model)
        return
    _locate.check_available(model)


def required_modules(model: str) -> tuple[str, ...]:
    """The packages loading ``model`` imports (checked before a worker forks or a server starts)."""
    return ("openvino", "tokenizers") if is_runtime_dir(model) else ("torch", "transformers")


def runtime_identity(model: str) -> tuple[str, str] | None:
    """(runtime, precision) of a built runtime directory; None for a checkpoint (torch)."""
    if not is_runtime_dir(model):
        return None
    manifest = read_manifest(model)
    return manifest.runtime, manifest.precision


__all__ = ["MANIFEST_NAME", "RuntimeManifest", "check_available", "is_runtime_dir", "load_encoder", "model_fingerprint",
           "read_manifest", "required_modules", "runtime_fingerprint", "runtime_identity"]
