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
"""

from __future__ import annotations

import base64
import time
from typing import Any

import redis

from ..errors import ConfigurationError, ExamplesError
from ..fewshot.sets import pack_bytes
from ..taxonomy import Taxonomy

PACK_PREFIX = "zstagger:vectors:"
INLINE_LIMIT = 64 * 1024  # bytes of pack per task message; a few examples per label fit


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


def store_pack(client: redis.Redis, sha256: str, pack: bytes, expires_at: int) -> None:
    """Keep ``pack`` in Redis until at least ``expires_at`` (sent only when not there yet)."""
    key = PACK_PREFIX + sha256
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
