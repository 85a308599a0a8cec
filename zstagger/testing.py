"""Test helpers for zstagger and for plugin authors: a tiny offline model, sample images, fixtures.

In a plugin's ``conftest.py``::

    pytest_plugins = ["zstagger.testing"]

    def test_my_taxonomy(run_taxonomy):
        result = run_taxonomy(my_plugin.MY_TAXONOMY, sample_image())
        assert result.error is None and len(result.scores) == len(my_plugin.MY_TAXONOMY.labels)

Fixtures: ``tiny_model_dir`` (a CLIP checkpoint directory, built in seconds, no network),
``tiny_tagger`` (a :class:`~zstagger.Tagger` on it), ``run_taxonomy(taxonomy, image)``
(tag one image, returns a :class:`~zstagger.TagResult`), and ``zstagger_plugin`` (register a
plugin object for the duration of one test). Scores from the tiny model are meaningless:
use it to check that a taxonomy loads, validates and runs, not what it predicts.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from .synthetic import sample_image  # noqa: F401  (part of this module's API)

TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=16, image_size=64)


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte-level BPE alphabet: one printable character per byte value."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tokenizer_files(directory: str | Path) -> int:
    """Write a small CLIP BPE vocabulary (bytes + a few merges); returns the vocab size."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    chars = _bytes_to_unicode()
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("o", "n</w>"), ("i", "n"), ("e", "r</w>")]
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return len(vocab)


def make_tiny_checkpoint(directory: str | Path, kind: Literal["clip", "siglip"] = "clip", seed: int = 0) -> Path:
    """Save a randomly initialised tiny CLIP (or SigLIP) model with its processor, offline.

    It goes through exactly the files and code path of a real checkpoint
    (``save_pretrained`` / ``from_pretrained``); only the sizes are small.
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # e.g. "requires torchvision, falling back": not the user's concern
    try:
        return _make_tiny_checkpoint(directory, kind, seed)
    finally:
        hf_logging.set_verbosity(verbosity)


def _make_tiny_checkpoint(directory: str | Path, kind: str, seed: int) -> Path:
    import torch
    from transformers import CLIPImageProcessor, CLIPTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tok_dir:
        vocab_size = write_tokenizer_files(tok_dir)
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    bos, eos = tokenizer.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"])
    text = dict(TINY_TEXT, vocab_size=vocab_size, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    torch.manual_seed(seed)
    if kind == "clip":
        from transformers import CLIPConfig, CLIPModel, CLIPProcessor

        config = CLIPConfig(projection_dim=32, text_config=dict(text, max_position_embeddings=77), vision_config=TINY_VISION)
        model = CLIPModel(config)
        processor = CLIPProcessor(
            image_processor=CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}),
            tokenizer=tokenizer,
        )
    elif kind == "siglip":
        from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

        config = SiglipConfig(text_config=dict(text, max_position_embeddings=64), vision_config=TINY_VISION)
        model = SiglipModel(config)
        processor = SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": 64, "width": 64}), tokenizer=tokenizer)
    else:
        raise ValueError(f"kind must be 'clip' or 'siglip', not {kind!r}")
    # Random init gives near-identical embeddings; spread the weights so scores differ.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.2)
    model.eval().save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@contextlib.contextmanager
def registered_plugin(plugin: Any, name: str | None = None) -> Iterator[str]:
    """Register a plugin for the duration of a ``with`` block; always unregisters."""
    from . import plugins

    registered = plugins.register(plugin, name=name)
    try:
        yield registered
    finally:
        with contextlib.suppress(ValueError):
            plugins.unregister(registered)


# -- pytest fixtures (active when a conftest lists "zstagger.testing" in pytest_plugins) --

try:
    import pytest
except ImportError:  # pragma: no cover - the helpers above work without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture(scope="session")
    def tiny_model_dir(tmp_path_factory) -> Path:
        """Path to a tiny CLIP checkpoint directory (built once per test session)."""
        return make_tiny_checkpoint(tmp_path_factory.mktemp("zstagger-tiny-clip"))

    @pytest.fixture(scope="session")
    def tiny_tagger(tiny_model_dir):
        """A Tagger on the tiny checkpoint, on CPU in fp32."""
        from .tagger import Tagger

        with Tagger(str(tiny_model_dir), device="cpu", precision="fp32", batch_size=4) as tagger:
            yield tagger

    @pytest.fixture
    def run_taxonomy(tiny_tagger):
        """``run_taxonomy(taxonomy_or_name, image=None)`` -> TagResult for one image."""

        def run(taxonomy, image=None):
            return tiny_tagger.tag([image if image is not None else sample_image()], taxonomy=taxonomy)[0]

        return run

    @pytest.fixture
    def zstagger_plugin():
        """``with zstagger_plugin(obj): ...`` registers a plugin object just for that block."""
        return registered_plugin

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
