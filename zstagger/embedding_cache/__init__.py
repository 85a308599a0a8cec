"""Embeddings computed once and kept on disk, below the tagger (which is handed them).

- :mod:`.text`: text embeddings of taxonomies' prompts and each model's scoring scalars
  (``.npy`` / JSON files), so a taxonomy is not re-encoded at every start;
- :mod:`.images`: image embeddings in one SQLite file, keyed by the SHA-256 of the image
  bytes, the model fingerprint and the preprocessing mode, so evaluating, calibrating
  and re-tagging never encode the same image twice.

The tagger talks to an image-embedding cache through :class:`ImageEmbeddingStore`
(``get_many`` / ``put_many``), so any object with those two methods (an embedding store
on PostgreSQL, say) can be handed to it instead. Nothing here imports torch or anything
above it.
"""

from .images import EmbeddingKey, ImageEmbeddingStore, SQLiteImageCache, default_image_cache
from .text import EmbeddingCache, ModelInfo, ModelInfoCache

__all__ = ["EmbeddingCache", "EmbeddingKey", "ImageEmbeddingStore", "ModelInfo", "ModelInfoCache", "SQLiteImageCache",
           "default_image_cache"]
