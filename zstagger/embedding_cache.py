"""Text embeddings cached on disk, so a large taxonomy is not re-encoded at every start.

The key is the model's fingerprint (config, weights revision) plus a hash of the exact
prompt list, so any change to a taxonomy's labels, synonyms or templates, or to the model,
misses the cache instead of reusing stale vectors. Files are plain ``.npy`` (no pickle),
written atomically.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

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

    def wrap(self, embed: Callable[[Sequence[str]], torch.Tensor]) -> Callable[[Sequence[str]], torch.Tensor]:
        """``embed`` with a disk cache in front of it."""

        def cached(prompts: Sequence[str]) -> torch.Tensor:
            path = self.directory / f"{self.key(prompts)}.npy"
            try:
                array = np.load(path, allow_pickle=False)
                if array.shape[0] == len(prompts):
                    return torch.from_numpy(array)
            except (OSError, ValueError):
                pass  # missing or unreadable: recompute
            embeds = embed(prompts)
            self._store(path, embeds.numpy())
            return embeds

        return cached

    def _store(self, path: Path, array: np.ndarray) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, array, allow_pickle=False)
            os.replace(tmp, path)
        except OSError as exc:  # a read-only or full disk must not stop tagging
            log.warning("zstagger: could not write the embedding cache in %s: %s", self.directory, exc)
