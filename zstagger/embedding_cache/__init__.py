"""Embeddings computed once and kept on disk, below the tagger (which is handed them).

- :mod:`.text`: text embeddings of taxonomies' prompts and each model's scoring scalars
  (``.npy`` / JSON files), so a taxonomy is not re-encoded at every start;
- :mod:`.images`: image embeddings in one SQLite file, keyed by the SHA-256 of the image
  bytes, the model fingerprint and the preprocessing mode, so evaluating, calibrating
  and re-tagging never encode the same image twice.

The embedder (:mod:`zstagger.embedder`) talks to an image-embedding cache through :class:`ImageEmbeddingCache`
(``get_many`` / ``put_many``), so any object with those two methods can be handed to it
instead; one that also has ``record`` (:class:`ImageRecorder`, the embedding store of
:mod:`zstagger.store`) is told about every image seen, with its reference and job. Nothing
here imports torch or anything above it.
"""

from .images import (
    EmbeddingKey,
    ImageEmbeddingCache,
    ImageRecorder,
    ImageSighting,
    SQLiteImageCache,
    default_image_cache,
)
from .text import EmbeddingCache, ModelInfo, ModelInfoCache

# Renamed: "store" is the embedding store (zstagger.store) and the job store (zstagger.queue.jobstore).
_RENAMED = {"ImageEmbeddingStore": "ImageEmbeddingCache"}


def __getattr__(name: str):
    if name in _RENAMED:
        import warnings

        warnings.warn(f"zstagger.embedding_cache.{name} is now {_RENAMED[name]}", DeprecationWarning, stacklevel=2)
        return globals()[_RENAMED[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EmbeddingCache", "EmbeddingKey", "ImageEmbeddingCache", "ImageRecorder", "ImageSighting", "ModelInfo",
           "ModelInfoCache", "SQLiteImageCache", "default_image_cache"]
