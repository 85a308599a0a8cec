"""The vector pack: a taxonomy's embedded images for one model, as bytes with a SHA-256.

Layout: the magic line ``ZSTAGGER-VECTORS-1\\n``, an 8-byte little-endian header length, a
JSON header ``{"dim": D, "sets": [{"label", "kind", "refs", "names"}, ...]}`` and then, set
after set, one little-endian fp16 row of D values per name (1 KiB per image at D=512).
``refs`` are the label's references as the spec lists them (so a pack made for another
list is recognised as stale); ``names`` say which image each row came from (what a
known-image match reports).

Packs come from untrusted places (a queue message, Redis, a file): :func:`read_pack`
checks the hash, the sizes and every field before it trusts any of them, and never
unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ExamplesError

if TYPE_CHECKING:
    from collections.abc import Sequence

MAGIC = b"ZSTAGGER-VECTORS-1\n"
_KINDS = ("examples", "negative_examples", "known_images")


@dataclass(frozen=True)
class ImageSet:
    """One label's images of one kind, embedded: what a pack holds per set."""

    label: str
    kind: str  # examples, negative_examples or known_images
    refs: tuple[str, ...]  # as the spec lists them
    names: tuple[str, ...]  # the image each row came from
    half: np.ndarray  # (len(names), dim) little-endian fp16: the stored form

    @cached_property
    def vectors(self) -> np.ndarray:
        """Unit float32 rows, computed from the stored fp16 form, so that vectors read from a
        pack and vectors just embedded from the files are the same numbers."""
        rows = self.half.astype(np.float32)
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)

    @classmethod
    def of(cls, label: str, kind: str, refs: Sequence[str], names: Sequence[str], vectors: np.ndarray) -> ImageSet:
        half = np.asarray(vectors, dtype=np.float32).astype("<f2").reshape(len(names), -1)
        return cls(label, kind, tuple(refs), tuple(names), half)


@dataclass(frozen=True)
class Pack:
    dim: int
    sets: tuple[ImageSet, ...]
    sha256: str
    size: int

    @property
    def count(self) -> int:
        return sum(len(s.names) for s in self.sets)


def build_pack(dim: int, sets: Sequence[ImageSet]) -> bytes:
    """The bytes of a pack holding ``sets``."""
    header = json.dumps({"dim": dim, "sets": [{"label": s.label, "kind": s.kind, "refs": list(s.refs), "names": list(s.names)}
                                              for s in sets]}, separators=(",", ":")).encode("ascii")
    body = [np.ascontiguousarray(s.half, dtype="<f2").reshape(len(s.names), dim).tobytes() for s in sets]
    return b"".join([MAGIC, struct.pack("<Q", len(header)), header, *body])


def read_pack(data: bytes, sha256: str | None = None, what: str = "vector pack") -> Pack:
    """Parse and check a pack; float32 unit rows. ``sha256``: the hash it must have."""
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise ExamplesError(f"{what}: its SHA-256 is {digest[:16]}..., not the {sha256[:16]}... the taxonomy names "
                            "(damaged or replaced); embed the images again with `zstagger examples embed`")
    try:
        if not data.startswith(MAGIC):
            raise ValueError("not a zstagger vector pack")
        start = len(MAGIC) + 8
        (length,) = struct.unpack_from("<Q", data, len(MAGIC))
        if length > len(data) - start:
            raise ValueError("header runs past the end")
        header = json.loads(data[start : start + length])
        dim = header["dim"]
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 65536:
            raise ValueError(f"bad dimension {dim!r}")
        offset = start + length
        sets = []
        for entry in header["sets"]:
            label, kind, refs, names = entry["label"], entry["kind"], entry["refs"], entry["names"]
            if not isinstance(label, str) or kind not in _KINDS or not _strings(refs) or not _strings(names):
                raise ValueError("a malformed set entry")
            end = offset + 2 * dim * len(names)
            if end > len(data):
                raise ValueError("vectors run past the end")
            rows = np.frombuffer(data, dtype="<f2", count=dim * len(names), offset=offset).reshape(len(names), dim)
            if not np.isfinite(rows).all():
                raise ValueError("vectors that are not finite numbers")
            sets.append(ImageSet(label, kind, tuple(refs), tuple(names), rows))
            offset = end
        if offset != len(data):
            raise ValueError(f"{len(data) - offset} bytes after the last set")
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise ExamplesError(f"{what}: unreadable ({exc}); embed the images again with `zstagger examples embed`") from None
    return Pack(dim, tuple(sets), digest, len(data))


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)
