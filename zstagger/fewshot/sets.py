"""A taxonomy's images as vector sets for one model: from its embedded pack, or from its files.

:func:`resolve_image_sets` is what compiling a taxonomy calls. The order:

1. the spec's ``image_vectors`` for this model's fingerprint, if it has them: the pack
   inline, in its file beside the taxonomy file, or (a queued task) from ``load_pack``
   by its SHA-256; a pack embedded for another list of images than the spec now names is
   stale and not used;
2. otherwise the image files themselves, embedded through ``embed`` (the tagger's image
   loading, with its limits and its image-embedding cache).

Every image must be readable: an unreadable one, a directory without images, or no
vectors for this model where the files cannot be read is an :class:`ExamplesError`
naming the taxonomy, the label, the image and what to do. Nothing falls back to text
alone without saying so.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ExamplesError, FileReadError, ImageLoadError
from ..files import read_regular_file
from ..images import expand_inputs, is_url
from ..taxonomy import IMAGE_KINDS, ImageVectors, Taxonomy
from .pack import ImageSet, build_pack, read_pack

Embed = Callable[[Sequence[str]], Sequence["np.ndarray | ImageLoadError"]]
LoadPack = Callable[[str], "bytes | None"]  # sha256 -> the pack's bytes, or None when not there

MAX_PACK_BYTES = 2 * 1024 * 1024 * 1024  # 100,000 known images at 512-d are ~110 MB
_SHOWN = 3
KIND_WORDS = {"examples": "examples", "negative_examples": "counter-examples", "known_images": "known images"}
_ONE = {"examples": "example", "negative_examples": "counter-example", "known_images": "known image"}


@dataclass(frozen=True)
class ImageSets:
    """Every image set of a taxonomy for one model, by (label, kind)."""

    sets: dict[tuple[str, str], ImageSet]
    dim: int
    origin: str  # "embedded vectors" or "image files"

    def get(self, label: str, kind: str) -> ImageSet | None:
        return self.sets.get((label, kind))

    def under(self, prefix: str) -> ImageSets | None:
        """The sets whose key starts with ``prefix``, keyed without it (a facet's values: ``colour=``)."""
        found = {(label[len(prefix):], kind): s for (label, kind), s in self.sets.items() if label.startswith(prefix)}
        return ImageSets(found, self.dim, self.origin) if found else None

    def without_facets(self, taxonomy: Taxonomy) -> ImageSets:
        """The sets of the taxonomy's own labels (not its facets' values)."""
        own = {label.name for label in taxonomy.labels}
        return ImageSets({key: s for key, s in self.sets.items() if key[0] in own}, self.dim, self.origin)


def resolve_image_sets(
    taxonomy: Taxonomy, fingerprint: str | None, model: str, embed: Embed, load_pack: LoadPack | None = None
) -> ImageSets | None:
    """The taxonomy's image sets for the model with ``fingerprint`` (None: it names no images)."""
    if not taxonomy.has_images:
        return None
    vectors = taxonomy.image_vectors.get(fingerprint) if fingerprint else None
    unusable = ""
    if vectors is not None:
        try:
            return sets_from_pack(taxonomy, vectors, load_pack)
        except ExamplesError as exc:
            unusable = str(exc)
    try:
        return sets_from_files(taxonomy, embed)
    except ExamplesError as exc:
        raise ExamplesError(f"{exc}{_why_no_vectors(taxonomy, fingerprint, model, unusable)}") from None


def _why_no_vectors(taxonomy: Taxonomy, fingerprint: str | None, model: str, unusable: str) -> str:
    fix = f"embed them for this model where the files are: zstagger examples embed -t {taxonomy.name} --model {model} -o FILE.yaml"
    if unusable:
        return f"; its embedded vectors for this model cannot be used either ({unusable})"
    if taxonomy.image_vectors:
        others = ", ".join(f"{v.model} (fingerprint {k})" for k, v in taxonomy.image_vectors.items())
        return (f"; the taxonomy carries image vectors for {others}, not for this model, {model} (fingerprint "
                f"{fingerprint}): {fix}")
    return f"; where these files cannot be read (queue workers), {fix}"


# -- from the pack ---------------------------------------------------------------------------


def pack_bytes(taxonomy: Taxonomy, vectors: ImageVectors, load_pack: LoadPack | None = None) -> bytes:
    """The pack's bytes: inline, from its file (beside the taxonomy file), or by hash from ``load_pack``."""
    what = f"taxonomy {taxonomy.name!r}: image vectors for {vectors.model}"
    if vectors.inline is not None:
        try:
            return base64.b64decode(vectors.inline, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ExamplesError(f"{what}: the inline pack is not base64 ({exc})") from None
    problem = f"the pack {vectors.sha256[:16]}... is neither inline nor in a file"
    if vectors.file is not None:
        path = os.path.join(taxonomy.source_dir or ".", vectors.file)
        try:
            return read_regular_file(path, MAX_PACK_BYTES)
        except FileReadError as exc:
            problem = f"cannot read its pack file: {exc}"
    if load_pack is not None:
        data = load_pack(vectors.sha256)
        if data is not None:
            return data
        problem = f"the pack {vectors.sha256[:16]}... is not in the queue's store any more (enqueue the job again)"
    raise ExamplesError(f"{what}: {problem}")


def sets_from_pack(taxonomy: Taxonomy, vectors: ImageVectors, load_pack: LoadPack | None = None) -> ImageSets:
    what = f"taxonomy {taxonomy.name!r}: image vectors for {vectors.model}"
    pack = read_pack(pack_bytes(taxonomy, vectors, load_pack), vectors.sha256, what)
    if pack.dim != vectors.dim:
        raise ExamplesError(f"{what}: the pack has {pack.dim}-d vectors, the spec says {vectors.dim}")
    found = {(s.label, s.kind): s for s in pack.sets}
    sets = {}
    for key, label in taxonomy.image_owners():
        for kind, refs in label.image_refs().items():
            entry = found.get((key, kind))
            if entry is None or list(entry.refs) != list(refs):
                raise ExamplesError(
                    f"{what} are stale: they were embedded for other {KIND_WORDS[kind]} of label {key!r} than the "
                    f"spec now lists; embed them again (zstagger examples embed)")
            sets[(key, kind)] = entry
    return ImageSets(sets, pack.dim, "embedded vectors")


# -- from the files --------------------------------------------------------------------------------


def expand_refs(taxonomy: Taxonomy, label: str, kind: str, refs: Sequence[str]) -> list[tuple[str, str]]:
    """(name, location) per image: a URL as is, a file, or each image file of a directory
    (recursive, sorted). Names are as the spec writes them (a directory's files under its
    name); locations are absolute paths (relative ones are relative to :meth:`Taxonomy.images_base`)."""
    base = taxonomy.images_base()
    out = []
    for ref in refs:
        if is_url(ref):
            out.append((ref, ref))
            continue
        location = os.path.join(base, os.path.expanduser(ref))
        if os.path.isdir(location):
            files = list(expand_inputs([location]))
            if not files:
                raise ExamplesError(f"taxonomy {taxonomy.name!r}: label {label!r}: {KIND_WORDS[kind]} directory {ref} "
                                    f"({location}) has no images (.jpg, .png, .webp, ...)")
            out.extend((os.path.join(ref, os.path.relpath(f, location)), f) for f in files)
        else:
            out.append((ref, location))
    return out


def sets_from_files(taxonomy: Taxonomy, embed: Embed) -> ImageSets:
    """Embed every image the taxonomy names (each distinct image once); all must be readable."""
    wanted = [(key, kind, refs, expand_refs(taxonomy, key, kind, refs))
              for key, label in taxonomy.image_owners() for kind, refs in label.image_refs().items()]
    locations = list(dict.fromkeys(location for *_, images in wanted for _, location in images))
    embedded = dict(zip(locations, embed(locations)))
    problems, sets, dim = [], {}, 0
    for label, kind, refs, images in wanted:
        failed = [(name, embedded[location]) for name, location in images if isinstance(embedded[location], ImageLoadError)]
        if failed:
            problems.append((label, kind, len(images), failed))
            continue
        vectors = np.stack([embedded[location] for _, location in images])  # type: ignore[misc]
        dim = vectors.shape[1]
        sets[(label, kind)] = ImageSet.of(label, kind, refs, [name for name, _ in images], vectors)
    if problems:
        raise ExamplesError(_describe_unreadable(taxonomy, problems))
    return ImageSets(sets, dim, "image files")


def _describe_unreadable(taxonomy: Taxonomy, problems: list) -> str:
    parts = []
    for label, kind, total, failed in problems:
        errors = "; ".join(f"{name}: {error.kind}: {error.message}" for name, error in failed[:_SHOWN])
        more = f"; and {len(failed) - _SHOWN} more" if len(failed) > _SHOWN else ""
        if total == 1:
            head = f"its one {_ONE[kind]} cannot be read"
        elif len(failed) == total:
            head = f"none of its {total} {KIND_WORDS[kind]} can be read"
        else:
            head = f"{len(failed)} of its {total} {KIND_WORDS[kind]} cannot be read"
        parts.append(f"label {label!r}: {head} ({errors}{more})")
    return f"taxonomy {taxonomy.name!r}: " + "; ".join(parts)


# -- the self-contained spec -----------------------------------------------------------------------


def embed_into_spec(
    taxonomy: Taxonomy, fingerprint: str, model: str, preprocessing: str, embed: Embed, *, out_dir: str,
    pack_name: Callable[[str], str], inline_limit: int,
) -> tuple[Taxonomy, dict[str, bytes]]:
    """The taxonomy with its images embedded for this model (``image_vectors[fingerprint]``),
    to be written into ``out_dir``; also the pack files to write beside it (name -> bytes).

    Vectors it already carries for other models are kept (still valid ones only: a pack for
    another list of images is dropped). Packs up to ``inline_limit`` bytes go inline;
    larger ones into a file ``pack_name(fingerprint)``. Relative image paths keep naming the
    same files: ``examples_root`` is set (relative to ``out_dir``) when the output moves.
    """
    if not taxonomy.has_images:
        raise ExamplesError(f"taxonomy {taxonomy.name!r} names no examples, counter-examples or known images: nothing to embed")
    sets = sets_from_files(taxonomy, embed)
    packs: dict[str, bytes] = {}
    for key, vectors in taxonomy.image_vectors.items():
        if key != fingerprint:
            try:
                sets_from_pack(taxonomy, vectors)
                packs[key] = pack_bytes(taxonomy, vectors)
            except ExamplesError:
                pass  # stale or missing: not worth carrying
    ordered = [sets.sets[(key, kind)] for key, _ in taxonomy.image_owners() for kind in IMAGE_KINDS
               if (key, kind) in sets.sets]
    packs[fingerprint] = build_pack(sets.dim, ordered)
    spec = taxonomy.model_dump(mode="json")
    old = dict(taxonomy.image_vectors)
    spec["image_vectors"] = {}
    files: dict[str, bytes] = {}
    for key, data in packs.items():
        pack = read_pack(data)
        entry = {"model": model, "preprocessing": preprocessing} if key == fingerprint else \
            {"model": old[key].model, "preprocessing": old[key].preprocessing}
        entry.update(dim=pack.dim, count=pack.count, sha256=pack.sha256, size=pack.size)
        if len(data) <= inline_limit:
            entry["inline"] = base64.b64encode(data).decode("ascii")
        else:
            entry["file"] = pack_name(key)
            files[entry["file"]] = data
        spec["image_vectors"][key] = entry
    if taxonomy.examples_root is None or not os.path.isabs(taxonomy.examples_root):
        root = os.path.relpath(taxonomy.images_base(), os.path.abspath(out_dir))
        spec["examples_root"] = None if root == "." else root
    return Taxonomy.parse(spec, source=f"taxonomy {taxonomy.name!r} with embedded images"), files


def image_counts(taxonomy: Taxonomy) -> dict[str, dict[str, int]]:
    """Per label that names images: how many images of each kind. From an embedded pack when
    the spec carries a usable one (no file is touched), else by listing the directories."""
    for vectors in taxonomy.image_vectors.values():
        try:
            found = sets_from_pack(taxonomy, vectors).sets
        except ExamplesError:
            continue
        return _counts(taxonomy, lambda label, kind, refs, found=found: len(found[(label, kind)].names))

    def listed(label: str, kind: str, refs: Sequence[str]) -> int:
        try:
            return len(expand_refs(taxonomy, label, kind, refs))
        except ExamplesError:
            return 0

    return _counts(taxonomy, listed)


def _counts(taxonomy: Taxonomy, count: Callable[[str, str, Sequence[str]], int]) -> dict[str, dict[str, int]]:
    return {key: {kind: count(key, kind, refs) for kind, refs in label.image_refs().items()}
            for key, label in taxonomy.image_owners() if label.image_refs()}
