"""Labelled datasets: a folder per label, or a JSONL/CSV manifest, checked before any image is read.

Formats:

Items may be animations and videos as well as images (each judged as one item, see
:mod:`.scored`): folders list video files (``VIDEO_EXTENSIONS``) beside images.

- folders: ``DATA/<label>/*.jpg``; a label name with ``/`` (a hierarchy) is a nested folder
  (``DATA/apparel/shoes/``), and ``DATA/_none/`` holds images that no label applies to;
- manifest: one row per image, ``image`` (a path relative to the manifest, an absolute
  path, or an http(s) URL) and ``labels`` (JSONL: a list; CSV: names separated by ``;``),
  optionally ``text`` (the product's title / description: eval reports image-only and image+text);
  an empty list means that no label applies. JSONL rows may also give ``facets``: a facet's
  true value per facet name (``{"colour": "red", "sleeve": null}``; null: not visible / not
  applicable); a facet a row leaves out is not judged on that image.

Every problem is found before any image is decoded: names the taxonomy lacks (with
close matches), broken manifest rows, empty label folders, a dataset with no positives.
Background labels ("none of the above") count as no label.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetError
from ..images import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, is_url
from ..sources import is_source_url
from ..taxonomy import Taxonomy

NONE_FOLDER = "_none"
_ITEMS = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS  # animations (GIF, APNG, WebP) have image extensions
_SHOWN = 5  # problems listed in one error line


@dataclass(frozen=True, slots=True)
class LabelledImage:
    ref: str  # what the tagger reads: a path or URL
    labels: tuple[str, ...]  # true labels (empty: none applies)
    weight: float = 1.0  # how many images it stands for (manifests from `zstagger review export`: 1 / inclusion probability)
    text: str | None = None  # the product's title / description (manifests' optional ``text``), fused by text_fusion
    facets: tuple[tuple[str, str | None], ...] = ()  # (facet, true value or None: not visible), for the facets given


@dataclass(frozen=True)
class LabelledDataset:
    source: str
    kind: str  # "folders", "jsonl" or "csv"
    items: tuple[LabelledImage, ...]
    fingerprint: str  # changes when an image is added, removed, relabelled or edited

    @property
    def name(self) -> str:
        return self.source


def load_dataset(path: str | os.PathLike, taxonomy: Taxonomy) -> LabelledDataset:
    """Read and check a dataset against ``taxonomy``; no image is opened."""
    root = Path(path)
    if not root.exists():
        raise DatasetError(f"{path} does not exist: give a folder of label folders (DATA/<label>/*.jpg) or a .jsonl/.csv manifest")
    if root.is_dir():
        kind, items = "folders", _from_folders(root)
    elif root.suffix.lower() in (".jsonl", ".ndjson"):
        kind, items = "jsonl", _from_manifest(root, _jsonl_rows(root))
    elif root.suffix.lower() == ".csv":
        kind, items = "csv", _from_manifest(root, _csv_rows(root))
    else:
        raise DatasetError(f"{path}: a dataset is a folder, a .jsonl or a .csv manifest (got a {root.suffix or 'plain'} file)")
    if not items:
        raise DatasetError(f"{path}: no labelled images (expected {path}/<label>/*.jpg folders or manifest rows)")
    _check_labels(items, taxonomy, str(path))
    _check_facets(items, taxonomy, str(path))
    background = {label.name for label in taxonomy.labels if label.background}
    if any(label in background for labels in {item.labels for item in items} for label in labels):
        kept = _Labels()
        items = [LabelledImage(item.ref, kept(tuple(label for label in item.labels if label not in background)), item.weight,
                               item.text, item.facets) for item in items]
    if taxonomy.mode == "single":
        _check_single_paths(items, taxonomy, str(path))
    if not any(item.labels for item in items):
        raise DatasetError(
            f"{path}: all {len(items)} images are labelled as showing none of the labels; precision and recall need "
            "positives: add images of at least one label"
        )
    return LabelledDataset(str(path), kind, tuple(items), _fingerprint(items))


def _from_folders(root: Path) -> list[LabelledImage]:
    items: list[LabelledImage] = []
    empty: list[str] = []
    loose: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        images = sorted(f for f in filenames if not f.startswith(".") and Path(f).suffix.lower() in _ITEMS)
        rel = Path(dirpath).relative_to(root).as_posix()
        if rel == ".":
            loose = images
            continue
        if not images and not dirnames:
            empty.append(rel)
        label = () if rel == NONE_FOLDER else (rel,)
        items.extend(LabelledImage(os.path.join(dirpath, f), label) for f in images)
    if empty:
        raise DatasetError(
            f"{root}: label folder{'s' if len(empty) > 1 else ''} with no images: {_listed(empty)} "
            f"(image extensions: .jpg, .png, .webp, ...); remove {'them' if len(empty) > 1 else 'it'} or add images"
        )
    if loose:
        raise DatasetError(
            f"{root}: {len(loose)} images directly in the dataset folder have no label ({_listed(loose)}): move each into "
            f"a folder named after its label, or into {NONE_FOLDER}/ if no label applies"
        )
    return items


def _jsonl_rows(path: Path) -> Iterable[tuple[int, object]]:
    with _open_manifest(path) as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except ValueError as exc:
                yield number, DatasetError(f"not JSON ({exc.args[0].split(':')[0]})")


def _csv_rows(path: Path) -> Iterable[tuple[int, object]]:
    with _open_manifest(path) as fh:
        reader = csv.DictReader(fh)
        missing = {"image", "labels"} - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"{path}: the header must name the columns image and labels (missing: {', '.join(sorted(missing))})")
        for row in reader:
            labels = row.get("labels")
            if isinstance(labels, str):
                row["labels"] = [label.strip() for label in labels.split(";") if label.strip()]
            yield reader.line_num, row


def _open_manifest(path: Path):
    # utf-8-sig: spreadsheet programs start a UTF-8 file with a byte-order mark; read it as text
    try:
        return open(path, encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the manifest: {exc.strerror or exc}") from None


class _Labels:
    """One tuple object per distinct set of labels (a million rows name a few dozen of them)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, ...], tuple[str, ...]] = {}

    def __call__(self, labels: tuple[str, ...]) -> tuple[str, ...]:
        return self._seen.setdefault(labels, tuple(sys.intern(label) for label in labels))


def _from_manifest(path: Path, rows: Iterable[tuple[int, object]]) -> list[LabelledImage]:
    items, broken = [], []
    base = path.parent
    labels_of = _Labels()
    try:
        for number, row in rows:
            problem = _row_problem(row)
            if problem:
                broken.append(f"line {number}: {problem}")
                continue
            ref = row["image"].strip()  # type: ignore[index]
            if not is_url(ref) and not is_source_url(ref) and not os.path.isabs(ref):
                ref = str(base / ref)
            text = row.get("text") or None  # type: ignore[union-attr]  (CSV: an empty cell is no text)
            items.append(LabelledImage(ref, labels_of(tuple(dict.fromkeys(row["labels"]))),  # type: ignore[index]
                                       float(row.get("weight", 1.0)), text,  # type: ignore[union-attr]
                                       tuple(sorted((row.get("facets") or {}).items()))))  # type: ignore[union-attr]
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: the manifest is not UTF-8 text") from None
    except csv.Error as exc:
        raise DatasetError(f"{path}: not a readable CSV file: {exc}") from None
    if broken:
        raise DatasetError(f"{path}: {len(broken)} broken row{'s' if len(broken) > 1 else ''}: {_listed(broken, sep='; ')}")
    return items


def _row_problem(row: object) -> str | None:
    if isinstance(row, DatasetError):
        return str(row)
    if not isinstance(row, dict):
        return f"expected an object with image and labels, got {type(row).__name__}"
    image, labels = row.get("image"), row.get("labels")
    if not isinstance(image, str) or not image.strip():
        return "no image (a path or URL)"
    if "\x00" in image:  # no file name or URL can hold one (and os.stat would raise)
        return f"image {image!r} contains a NUL byte, which no path or URL can"
    if "://" in image[:16] and not is_url(image) and not is_source_url(image):
        return f"unsupported URL {image!r} (only http://, https:// and the schemes of image sources: s3://, gs://, ...)"
    if labels is None:
        return "no labels field (use [] when no label applies)"
    if not isinstance(labels, list) or not all(isinstance(label, str) and label.strip() for label in labels):
        return "labels must be a list of label names"
    text = row.get("text")
    if text is not None and not isinstance(text, str):
        return "text must be a string (the product's title / description)"
    facets = row.get("facets", {})
    if not isinstance(facets, dict) or not all(isinstance(k, str) and (v is None or isinstance(v, str) and v.strip())
                                               for k, v in facets.items()):
        return "facets must map facet names to a value name (or null: not visible)"
    weight = row.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < 1e9 or weight != weight:
        return "weight must be a positive number (1 / the probability the image had of being chosen)"
    return None


def _check_labels(items: list[LabelledImage], taxonomy: Taxonomy, source: str) -> None:
    known = [label.name for label in taxonomy.labels]
    unknown = sorted({label for item in items for label in item.labels} - set(known))
    if not unknown:
        return
    described = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=2)
        described.append(f"{name!r}" + (f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""))
    raise DatasetError(
        f"{source}: {len(unknown)} label{'s' if len(unknown) > 1 else ''} not in taxonomy {taxonomy.name!r}: "
        f"{_listed(described, limit=10)}. Its labels: `zstagger taxonomies show {taxonomy.name}`"
        if taxonomy.name != "labels" else
        f"{source}: {len(unknown)} label{'s' if len(unknown) > 1 else ''} not among --labels: {_listed(described, limit=10)}"
    )


def _check_facets(items: list[LabelledImage], taxonomy: Taxonomy, source: str) -> None:
    """Every facet a row gives is a facet of the taxonomy, and its value one of that facet's values."""
    values = {facet.name: {value.name for value in facet.values} for facet in taxonomy.facets}
    bad = sorted({f"{name}={value}" if name in values else f"{name} (no such facet)"
                  for item in items for name, value in item.facets
                  if name not in values or value is not None and value not in values[name]})
    if bad:
        raise DatasetError(f"{source}: {len(bad)} facet value{'s' if len(bad) > 1 else ''} not in taxonomy "
                           f"{taxonomy.name!r}: {_listed(bad, limit=10)}. Its facets: `zstagger taxonomies show "
                           f"{taxonomy.name} --json`")


def _check_single_paths(items: list[LabelledImage], taxonomy: Taxonomy, source: str) -> None:
    """Single-label: an image's labels must lie on one root-to-leaf path (a label and its ancestors)."""
    bad = []
    for item in items:
        if len(item.labels) > 1:
            deepest = max(item.labels, key=lambda name: len(taxonomy.path_of(name)))
            if not set(item.labels) <= set(taxonomy.path_of(deepest)):
                bad.append(f"{item.ref} ({', '.join(item.labels)})")
    if bad:
        raise DatasetError(
            f"{source}: taxonomy {taxonomy.name!r} is single-label, but {len(bad)} images have several labels that are "
            f"not one path of its hierarchy: {_listed(bad)}; evaluate with a multi-label taxonomy, or keep one label per image"
        )


def _fingerprint(items: list[LabelledImage]) -> str:
    h = hashlib.sha256()
    for item in sorted(items, key=lambda i: i.ref):
        h.update(json.dumps([item.ref, sorted(item.labels)] + ([item.weight] if item.weight != 1.0 else [])
                            + ([item.text] if item.text is not None else [])
                            + ([list(item.facets)] if item.facets else [])).encode())
        if not is_url(item.ref) and not is_source_url(item.ref):  # an object's version is checked when it is read
            try:
                st = os.stat(item.ref)
                h.update(f":{st.st_size}:{st.st_mtime_ns}".encode())
            except OSError:
                h.update(b":missing")
    return h.hexdigest()[:16]


def _listed(things: list[str], limit: int = _SHOWN, sep: str = ", ") -> str:
    shown = sep.join(things[:limit])
    return shown + (f"{sep}and {len(things) - limit} more" if len(things) > limit else "")
