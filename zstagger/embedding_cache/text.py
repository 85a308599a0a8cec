"""Text embeddings and model scalars cached on disk, so nothing is re-encoded at every start.

Text embeddings are keyed by the model's fingerprint (:func:`~zstagger.engine.locate.model_fingerprint`)
plus a hash of the exact prompt list, so any change to a taxonomy's labels, synonyms or
templates, or to the model, misses the cache instead of reusing stale vectors. The
model's scoring scalars (logit scale and bias, sigmoid or softmax) are kept next to them,
by fingerprint, so a run whose image embeddings are cached too scores without loading
the model. Files are plain ``.npy`` and JSON (no pickle), written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class EmbeddingCache:
    def __init__(self, directory: str | os.PathLike, model_fingerprint: str):
        self.directory = Path(directory).expanduser() / "text-embeddings"
        self.model_fingerprint = model_fingerprint

    def key(self, prompts: Sequence[str]) -> str:
        h = hashlib.sha256(self.model_fingerprint.encode())
        for prompt in prompts:
            h.update(b"\0" + prompt.encode())
        return h.hexdigest()[:32]

    def wrap(self, embed: Callable[[Sequence[str]], np.ndarray]) -> Callable[[Sequence[str]], np.ndarray]:
        """``embed`` with a disk cache in front of it (``embed`` runs only on a miss)."""

        def cached(prompts: Sequence[str]) -> np.ndarray:
            path = self.directory / f"{self.key(prompts)}.npy"
            try:
                array = np.load(path, allow_pickle=False)
                if array.shape[0] == len(prompts):
                    return array
            except (OSError, ValueError):
                pass  # missing or unreadable: recompute
            embeds = np.asarray(embed(prompts), dtype=np.float32)
            _write_atomically(self.directory, path, lambda fh: np.save(fh, embeds, allow_pickle=False))
            return embeds

        return cached


@dataclass(frozen=True)
class ModelInfo:
    """What scoring needs from a model besides embeddings."""

    logit_scale: float
    logit_bias: float | None
    uses_sigmoid: bool


class ModelInfoCache:
    """:class:`ModelInfo` per model fingerprint, one small JSON file each."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory).expanduser() / "models"

    def get(self, fingerprint: str) -> ModelInfo | None:
        try:
            data = json.loads((self.directory / f"{fingerprint}.json").read_text())
            return ModelInfo(float(data["logit_scale"]), None if data["logit_bias"] is None else float(data["logit_bias"]),
                             bool(data["uses_sigmoid"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, fingerprint: str, info: ModelInfo) -> None:
        body = json.dumps(asdict(info)).encode()
        _write_atomically(self.directory, self.directory / f"{fingerprint}.json", lambda fh: fh.write(body))


def _write_atomically(directory: Path, path: Path, write: Callable) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:  # a read-only or full disk must not stop tagging
        log.warning("zstagger: could not write the embedding cache in %s: %s", directory, exc)
