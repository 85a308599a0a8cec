"""Finding and identifying a checkpoint without loading it (no torch or transformers import).

``zstagger worker`` checks the model this way before forking, so a missing model is one
line on stderr instead of pool processes failing one after another. The model
fingerprint that keys every cached embedding is computed here from the checkpoint's
files, so a run whose embeddings are all cached never loads the model.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import ConfigurationError, ModelNotFoundError


def looks_like_path(model: str) -> bool:
    return model.startswith((os.sep, ".", "~")) or os.path.isdir(model) or bool(os.altsep and model.startswith(os.altsep))


def locate(model: str) -> str:
    """A local directory (checked) or a Hub id (returned as is)."""
    if not model:
        raise ConfigurationError("no model given: pass --model (a Hub id or a local directory)")
    if looks_like_path(model):
        path = Path(model).expanduser()
        if not path.is_dir():
            raise ModelNotFoundError(f"model directory {model} does not exist")
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{model} has no config.json: it is not a saved transformers checkpoint "
                "(create one with model.save_pretrained(dir) and processor.save_pretrained(dir))"
            )
        return str(path)
    return model


def hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    parts = urlsplit(constants.ENDPOINT)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def not_found_offline(model: str) -> ModelNotFoundError:
    from huggingface_hub import constants

    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hugging Face Hub cannot be reached"
    return ModelNotFoundError(
        f"model {model!r} is not in the local Hugging Face cache and {why}.\n"
        f"Download it on a connected machine (hf download {model}) and copy the cache "
        "(HF_HOME) here, or save it to a directory and pass --model /path/to/model (or set ZSTAGGER_MODEL)."
    )


def check_available(model: str) -> None:
    """Raise ModelNotFoundError unless ``model`` can be loaded without surprises."""
    source = locate(model)
    if os.path.isdir(source):
        return
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(source, "config.json"), str):
        return
    if not hub_reachable():
        raise not_found_offline(source)


_WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".onnx"})
_HASHED_FILE_LIMIT = 64 * 1024 * 1024


def model_fingerprint(model: str) -> str | None:
    """A short hash that changes whenever the checkpoint's weights, config or processors do.

    Local directory: the content of its small files (config, image processor, tokenizer)
    plus the name, size and modification time of each weight file (hashing gigabytes of
    weights at every start would cost more than it saves). Hub id: the commit of the
    snapshot in the local Hugging Face cache. None when a Hub model is not cached yet
    (it has to be downloaded, which :meth:`ClipEncoder.load` does, before it has one).
    :meth:`~zstagger.engine.model.ClipEncoder.load` uses this same function, so cached
    embeddings and a freshly loaded model always agree on the key.
    """
    source = locate(model)
    h = hashlib.sha256()
    if os.path.isdir(source):
        for path in sorted(Path(source).iterdir()):
            if not path.is_file() or path.name.startswith("."):
                continue
            st = path.stat()
            if path.suffix.lower() in _WEIGHT_SUFFIXES or st.st_size > _HASHED_FILE_LIMIT:
                h.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns}\0".encode())
            else:
                h.update(f"{path.name}:".encode() + hashlib.sha256(path.read_bytes()).digest())
        return h.hexdigest()[:16]
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(source, "config.json")
    if not isinstance(config, str):
        return None
    h.update(f"hub:{source}@{Path(config).parent.name}".encode())  # .../snapshots/<commit>/config.json
    return h.hexdigest()[:16]
