"""The stored back catalogue, read without touching an image: re-tag, policy diff, similar images.

Everything here reads the embedding store (:mod:`zstagger.store`) and scores with the
Tagger's own code, so it sits above the tagger (layer of evaluation): :mod:`.selection`
(which images, and whether the store's embeddings fit the model), :mod:`.retag`,
:mod:`.diff` (what a taxonomy change flips), :mod:`.similar` (nearest stored images),
:mod:`.report` (the HTML page of a diff).
"""

from .diff import PolicyDiff, diff_policies
from .retag import retag, retag_lines
from .selection import Catalogue, ReadOnly, open_catalogue, parse_age, parse_since
from .similar import SimilarImage, find_similar

__all__ = ["Catalogue", "PolicyDiff", "ReadOnly", "SimilarImage", "diff_policies", "find_similar", "open_catalogue",
           "parse_age", "parse_since", "retag", "retag_lines"]
