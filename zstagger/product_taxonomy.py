"""Shopify's Standard Product Taxonomy (its published ``dist/en/`` files) as a zstagger taxonomy spec.

Shopify publishes the taxonomy under the MIT licence at github.com/Shopify/product-taxonomy;
zstagger ships no copy of it. :func:`shopify_spec` turns the published files into a spec,
a pure function of their contents:

- ``categories.json`` (``{"version", "verticals": [{"name", "prefix", "categories": [{"id",
  "name", "full_name", "level", "parent_id", "attributes": [{"id", ...}], ...}]}]}``): every
  category becomes a label, named by its full name ("Apparel & Accessories > Clothing"), its
  parent its parent; the hierarchy is walked level by level, scoring only the branch entered
  (``descent: {scoring: entered, stop: ...}``: an uncertain image stops at the deepest level
  it is sure of);
- ``attributes.json`` (``{"version", "attributes": [{"id", "name", "handle", "values": [...]}]}``):
  every attribute with values becomes a facet (named by its handle), applying under the
  highest categories that list it;
- ``integrations/google/shopify_<version>_to_google_<version>.json``: each category's Google
  product category ID, where the mapping gives one.

Each label's metadata carries its Shopify ID and Google ID into results (``category``); the
spec's ``source`` records the version, the files' hashes, the licence and the attribution.
:func:`read_dist` reads the files (size-capped, one-line errors); :func:`attribution` is the
notice to keep beside the generated file. Imports the taxonomy model and the file reader only.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import FileReadError, TaxonomyError
from .files import read_regular_file
from .taxonomy import Taxonomy

MAX_DIST_BYTES = 256 * 1024 * 1024  # categories.json with every vertical is ~40 MB, attributes.json ~4 MB
SOURCE_URL = "https://github.com/Shopify/product-taxonomy"
SOURCE_NAME = "Shopify Standard Product Taxonomy"
TEMPLATES = ["a product photo of {}.", "a photo of {} for sale."]
DEFAULT_STOP = 0.3
_GOOGLE_MAPPING = re.compile(r"^shopify_(.+)_to_google_(.+)\.json$")
_RELEASE = re.compile(r"^\d{4}-\d{2}")  # 2026-11 of 2026-11-unstable or 2025-03-rc1
_HANDLE = re.compile(r"[^A-Za-z0-9_.\-]+")


@dataclass(frozen=True)
class Dist:
    """The published files, parsed: categories, attributes, the Google mapping (if found) and the licence text."""

    categories: dict[str, Any]
    attributes: dict[str, Any]
    google: dict[str, Any] | None
    google_file: str | None
    licence: str | None
    hashes: dict[str, str]


def read_dist(dist_dir: str | Path, google_mapping: str | Path | None = None, licence: str | Path | None = None) -> Dist:
    """Read ``categories.json``, ``attributes.json``, the Google mapping for the categories'
    version (or ``google_mapping``) and the licence (``licence``, else a LICENSE file in the
    directory or up to three above it). A missing or broken file is a one-line TaxonomyError."""
    root = Path(dist_dir)
    if not root.is_dir():
        raise TaxonomyError(f"{root} is not a directory: give the dist/en directory of Shopify/product-taxonomy")
    hashes: dict[str, str] = {}
    categories = _json(root / "categories.json", hashes)
    attributes = _json(root / "attributes.json", hashes)
    version = str(categories.get("version", "")) if isinstance(categories, dict) else ""
    mapping = Path(google_mapping) if google_mapping is not None else _google_mapping_for(root, version)
    google = _json(mapping, hashes) if mapping is not None else None
    licence_text = None
    for candidate in ([Path(licence)] if licence is not None else
                      [p / "LICENSE" for p in [root, *list(root.resolve().parents)[:3]]]):
        if candidate.is_file():
            try:
                licence_text = read_regular_file(candidate, 1 << 20).decode("utf-8", "replace")
            except FileReadError as exc:
                raise TaxonomyError(f"cannot read the licence: {exc}") from None
            break
    return Dist(categories, attributes, google, mapping.name if mapping is not None else None, licence_text, hashes)


def _json(path: Path, hashes: dict[str, str]) -> Any:
    try:
        data = read_regular_file(path, MAX_DIST_BYTES)
    except FileReadError as exc:
        raise TaxonomyError(f"cannot read Shopify's taxonomy file: {exc}") from None
    hashes[path.name] = hashlib.sha256(data).hexdigest()
    try:
        return json.loads(data)
    except ValueError as exc:
        raise TaxonomyError(f"{path}: not JSON ({exc})") from None


def _google_mapping_for(root: Path, version: str) -> Path | None:
    """The Google mapping file for ``version`` (else the only one there); None without any.

    Between releases Shopify's main branch says ``2026-11-unstable`` in its files while the
    mapping's file name says ``2026-11``, beside the mappings of earlier releases: the release
    a version belongs to is its date part."""
    folder = root / "integrations" / "google"
    found = sorted(p for p in folder.glob("*.json") if _GOOGLE_MAPPING.match(p.name)) if folder.is_dir() else []
    named = {_GOOGLE_MAPPING.match(p.name).group(1): p for p in found}  # type: ignore[union-attr]
    release = _RELEASE.match(version)
    for candidate in (version, release.group(0) if release else None):
        if candidate in named:
            return named[candidate]
    return found[0] if len(found) == 1 else None


def shopify_spec(dist: Dist, *, name: str = "shopify", stop: float = DEFAULT_STOP,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The taxonomy spec (plain data, validated) for the published files in ``dist``."""
    say = progress or (lambda _: None)
    version = _field(dist.categories, "version", "categories.json")
    categories = [c for vertical in _list(dist.categories, "verticals", "categories.json")
                  for c in _list(vertical, "categories", "categories.json: a vertical")]
    say(f"{len(categories)} categories in {len(dist.categories['verticals'])} verticals")
    by_id: dict[str, dict] = {}
    for c in categories:
        for key in ("id", "name", "full_name"):
            _field(c, key, "categories.json: a category")
        by_id[c["id"]] = c
    google = _google_ids(dist.google) if dist.google is not None else {}
    labels, metadata = [], {}
    for c in categories:
        parent = c.get("parent_id")
        if parent is not None and parent not in by_id:
            raise TaxonomyError(f"categories.json: category {c['id']} has parent {parent}, which is not a category")
        label = {"name": c["full_name"], "text": c["name"]}
        if parent is not None:
            label["parent"] = by_id[parent]["full_name"]
        labels.append(label)
        meta = {"shopify_id": c["id"]}
        if c["id"] in google:
            meta["google_id"], meta["google_category"] = google[c["id"]]
        metadata[c["full_name"]] = meta
    facets, skipped = _facets(dist.attributes, categories, by_id)
    say(f"{len(facets)} attributes as facets ({len(skipped)} without values left out)")
    spec = {
        "name": name,
        "version": f"shopify-{version}",
        "description": f"{SOURCE_NAME} {version}: every category as a hierarchy, attributes as facets. "
                       f"Generated by `zstagger taxonomies import-shopify`; {attribution_line(version)}",
        "mode": "single",
        "templates": TEMPLATES,
        "default_threshold": 0.0,
        "descent": {"scoring": "entered", "stop": stop},
        "labels": labels,
        "facets": facets,
        "metadata": metadata,
        "source": {
            "name": SOURCE_NAME, "url": SOURCE_URL, "version": str(version), "licence": "MIT",
            "attribution": attribution_line(version), "categories": str(len(categories)),
            "attributes": str(len(_list(dist.attributes, "attributes", "attributes.json"))),
            "attributes_without_values": ",".join(skipped),
            **({"google_mapping": dist.google_file} if dist.google_file else {}),
            **{f"sha256_{file}": digest for file, digest in sorted(dist.hashes.items())},
        },
    }
    Taxonomy.parse(spec, source=f"{SOURCE_NAME} {version}")  # every problem at once, before it is written
    return spec


def _google_ids(mapping: Any) -> dict[str, tuple[str, str]]:
    """Shopify category ID -> (Google category ID, its full name), from the mapping's rules (the first output)."""
    found: dict[str, tuple[str, str]] = {}
    for block in _list(mapping, "mappings", "the Google mapping"):
        for rule in block.get("rules", []) if isinstance(block, dict) else []:
            try:
                source = rule["input"]["category"]["id"]
                outputs = rule["output"]["category"]
            except (KeyError, TypeError):
                continue
            if outputs and isinstance(outputs, list) and isinstance(outputs[0], dict) and "id" in outputs[0]:
                found.setdefault(str(source), (str(outputs[0]["id"]), str(outputs[0].get("full_name", ""))))
    return found


def _facets(attributes: Any, categories: list[dict], by_id: dict[str, dict]) -> tuple[list[dict], list[str]]:
    """Each attribute with values as a facet, applying under the highest categories that list it."""
    listed: dict[str, set[str]] = {}
    for c in categories:
        for attribute in c.get("attributes") or []:
            if isinstance(attribute, dict) and "id" in attribute:
                listed.setdefault(attribute["id"], set()).add(c["id"])
    facets, skipped, names = [], [], set()
    for attribute in _list(attributes, "attributes", "attributes.json"):
        for key in ("id", "name"):
            _field(attribute, key, "attributes.json: an attribute")
        handle = _HANDLE.sub("-", str(attribute.get("handle") or attribute["name"]).strip()).strip("-.") or "attribute"
        values = list(dict.fromkeys(str(v["name"]) for v in attribute.get("values") or []
                                    if isinstance(v, dict) and str(v.get("name", "")).strip()))
        where = listed.get(attribute["id"], set())
        if not values or not where:
            skipped.append(handle)
            continue
        while handle in names:
            handle += "_"
        names.add(handle)
        top = sorted(by_id[i]["full_name"] for i in where if not _ancestor_in(by_id, i, where))
        facets.append({"name": handle, "description": str(attribute.get("description") or attribute["name"]),
                       "values": [{"name": v} for v in values], "applies_to": top,
                       "none": f"no visible {str(attribute['name']).lower()}"})
    return facets, skipped


def _ancestor_in(by_id: dict[str, dict], category: str, where: set[str]) -> bool:
    parent = by_id[category].get("parent_id")
    while parent is not None:
        if parent in where:
            return True
        parent = by_id.get(parent, {}).get("parent_id")
    return False


def _list(data: Any, key: str, where: str) -> list:
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, list):
        raise TaxonomyError(f"{where}: expected a list under {key!r}: is this Shopify's dist/en directory?")
    return value


def _field(data: Any, key: str, where: str) -> Any:
    if not isinstance(data, dict) or data.get(key) in (None, ""):
        raise TaxonomyError(f"{where} has no {key!r}: is this Shopify's dist/en directory?")
    return data[key]


def attribution_line(version: Any) -> str:
    return f"contains data from the {SOURCE_NAME} ({SOURCE_URL}), version {version}, (c) Shopify Inc., MIT licence"


def attribution(dist: Dist) -> str:
    """The notice to keep beside a generated taxonomy: what it contains, and the licence's text."""
    version = dist.categories.get("version", "unknown") if isinstance(dist.categories, dict) else "unknown"
    text = (f"This taxonomy file was generated by zstagger from the {SOURCE_NAME}, version {version},\n"
            f"published by Shopify Inc. at {SOURCE_URL} under the MIT licence.\n\n")
    return text + (dist.licence if dist.licence else
                   "MIT License\n\nCopyright (c) Shopify Inc.\n\n(The LICENSE file of the source repository was not "
                   "found beside the dist files: keep a copy of it with this file.)\n")
