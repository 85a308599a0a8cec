"""Prompts to token ids without transformers: the ``tokenizers`` package and the build's tokenizer.json.

Padding and truncation are set from the runtime manifest to what the source model's
processor does (CLIP: pad to the longest prompt, truncate at 77; SigLIP: pad every prompt
to 64), so the ids equal those transformers' tokenizer gives (a test checks this).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError
from .manifest import TextConfig


class TextTokenizer:
    """Prompts in, ``{input name: int64 array (batch, length)}`` out."""

    def __init__(self, path: str | Path, config: TextConfig):
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            from ..extras import missing

            raise missing(exc.name or "tokenizers") from None
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # a damaged file raises the library's own errors
            raise ModelLoadError(f"{path}: not a readable tokenizer.json ({exc}); rebuild the runtime") from None
        self.config = config
        self._tokenizer.enable_truncation(max_length=config.max_length)
        self._tokenizer.enable_padding(
            pad_id=config.pad_id, pad_token=self._tokenizer.id_to_token(config.pad_id) or "",
            length=config.max_length if config.padding == "max_length" else None,
        )

    def __call__(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        encodings = self._tokenizer.encode_batch(list(prompts))
        arrays = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }
        return {name: arrays[name] for name in self.config.inputs}
