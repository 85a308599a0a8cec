"""A taxonomy's embedded image vectors on their way to the workers: small inline, large by hash.

The spec travels in every task message, so what it carries must stay small. On the
producer, :func:`spec_for_workers` makes the spec self-contained for workers that cannot
read the producer's files:

- relative image paths get the producer's base (``examples_root``), like image paths are
  made absolute, so workers with the same shared storage read the same files;
- each model's vector pack (``image_vectors``) goes inline (base64) when it is at most
  :data:`INLINE_LIMIT` bytes, a few examples per label; a larger one (100,000 known images
  are ~110 MB) is stored once in Redis under ``zstagger:vectors:<sha256>`` (content
  addressed: every job with the same pack shares it) until the job expires, and the task
  names it by its hash alone.

On the worker, :class:`RedisPackLoader` reads a pack by that hash (the tagger checks the
hash, and compiles each taxonomy once per process, so a pack is read once).

The spec itself goes the same way when it is large (a taxonomy of 10,000 product categories
with their facets is megabytes of JSON): :func:`spec_message` stores a spec whose JSON is over
:data:`SPEC_INLINE_LIMIT` once in Redis under ``zstagger:spec:<sha256>`` and every task of the
job carries ``{"stored_spec": <sha256>}``; :func:`stored_spec` reads it back on the worker
(checking the hash), once per process.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any

import redis

from ..errors import ConfigurationError, ExamplesError, TaxonomyError
from ..fewshot.sets import pack_bytes
from ..taxonomy import Taxonomy

PACK_PREFIX = "zstagger:vectors:"
INLINE_LIMIT = 64 * 1024  # bytes of pack per task message; a few examples per label fit
SPEC_PREFIX = "zstagger:spec:"
SPEC_INLINE_LIMIT = 64 * 1024  # bytes of spec JSON per task message; hundreds of labels fit
STORED_SPEC = "stored_spec"  # the key of a task's spec that is stored in Redis (beside its name)
MAX_STORED_SPEC = 128 * 1024 * 1024  # bytes of stored spec JSON a worker reads


def read_packs(spec: Taxonomy) -> dict[str, bytes]:
    """Every model's pack, read on the producer before anything is written (a missing pack file is a usage error)."""
    packs = {}
    for key, vectors in spec.image_vectors.items():
        try:
            packs[key] = pack_bytes(spec, vectors)
        except ExamplesError as exc:
            raise ConfigurationError(str(exc)) from None
    return packs


def spec_for_workers(spec: Taxonomy, packs: dict[str, bytes], client: redis.Redis, expires_at: int) -> dict[str, Any]:
    """The spec to put in every task of a job (see the module docstring); stores large packs in Redis."""
    located = spec.with_images_base()
    data = located.model_dump(mode="json")
    for key, pack in packs.items():
        entry = data["image_vectors"][key]
        entry["file"] = None
        if len(pack) <= INLINE_LIMIT:
            entry["inline"] = base64.b64encode(pack).decode("ascii")
        else:
            entry["inline"] = None
            store_pack(client, entry["sha256"], pack, expires_at)
    return data


def spec_message(data: dict[str, Any], client: redis.Redis, expires_at: int) -> dict[str, Any]:
    """What every task of a job carries for the spec ``data`` (:func:`spec_for_workers`'s): the
    spec itself, or, when its JSON is over :data:`SPEC_INLINE_LIMIT`, its hash, with the JSON
    stored once in Redis until the job expires."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    if len(text) <= SPEC_INLINE_LIMIT:
        return data
    sha256 = hashlib.sha256(text).hexdigest()
    store_pack(client, sha256, text, expires_at, prefix=SPEC_PREFIX)
    return {STORED_SPEC: sha256, "name": data.get("name")}  # (the name: error records say which taxonomy)


def is_stored_spec(data: Any) -> bool:
    return isinstance(data, dict) and STORED_SPEC in data and set(data) <= {STORED_SPEC, "name"}


def stored_spec(client: redis.Redis, sha256: Any) -> dict[str, Any]:
    """The spec a task names by hash, read from Redis; a :class:`TaxonomyError` (the
    spec is not there: it expired with its job, or it is damaged) otherwise."""
    if not isinstance(sha256, str) or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise TaxonomyError("a stored taxonomy spec is named by its sha256 (64 lowercase hex digits)")
    size = client.strlen(SPEC_PREFIX + sha256)
    if size > MAX_STORED_SPEC:
        raise TaxonomyError(f"the taxonomy spec stored in Redis under sha256 {sha256[:12]}... is {size:,} bytes, over "
                            f"the {MAX_STORED_SPEC:,} a worker reads")
    text = client.get(SPEC_PREFIX + sha256)
    if text is None:
        raise TaxonomyError(f"the job's taxonomy spec (sha256 {sha256[:12]}...) is no longer in Redis: "
                                 "it expired with its job, or was never stored; enqueue the job again")
    if hashlib.sha256(text).hexdigest() != sha256:
        raise TaxonomyError(f"the taxonomy spec stored in Redis under sha256 {sha256[:12]}... does not match its hash")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise TaxonomyError(f"the taxonomy spec stored in Redis under sha256 {sha256[:12]}... is not readable JSON") from None
    if not isinstance(data, dict):
        raise TaxonomyError("a stored taxonomy spec is not a JSON object")
    return data


def store_pack(client: redis.Redis, sha256: str, pack: bytes, expires_at: int, prefix: str = PACK_PREFIX) -> None:
    """Keep ``pack`` in Redis until at least ``expires_at`` (sent only when not there yet)."""
    key = prefix + sha256
    if not client.set(key, pack, nx=True, exat=expires_at):
        ttl = client.ttl(key)  # there already (another job): make it last as long as this one
        if ttl >= 0 and time.time() + ttl < expires_at:
            client.expireat(key, expires_at)


class RedisPackLoader:
    """``sha256 -> pack bytes`` from Redis (None when it is not there: expired or never stored)."""

    def __init__(self, client: redis.Redis):
        self.client = client

    def __call__(self, sha256: str) -> bytes | None:
        return self.client.get(PACK_PREFIX + sha256)
