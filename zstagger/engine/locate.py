"""Finding a checkpoint without loading it (no torch import): for fast, clear errors.

``zstagger worker`` checks the model this way before forking, so a missing model is one
line on stderr instead of pool processes failing one after another.
"""

from __future__ import annotations

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
