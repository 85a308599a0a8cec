"""Images in taxonomies: example, counter-example and known images, as vectors per model.

- :mod:`.pack`: the vector pack, the one format in which embedded images travel (inline in
  a spec, in a file beside it, or in Redis), identified by its SHA-256;
- :mod:`.sets`: a taxonomy's image references resolved into vector sets for one model,
  from its embedded pack or by embedding its files (through a callable the tagger hands
  in), and the self-contained spec ``zstagger examples embed`` writes.

The maths that uses the sets is in :mod:`zstagger.engine.fewshot`. Nothing here imports
the tagger, the queue or anything above them.
"""

from .pack import ImageSet, Pack, build_pack, read_pack
from .sets import ImageSets, embed_into_spec, resolve_image_sets

__all__ = ["ImageSet", "ImageSets", "Pack", "build_pack", "embed_into_spec", "read_pack", "resolve_image_sets"]
