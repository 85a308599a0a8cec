"""What both backends share: the queries, idempotent writes, and what happens when the store is away.

:class:`EmbeddingStore` is the one interface. A backend supplies its connections
(:meth:`_session`), its placeholder style and its bulk write; everything else (the
tagger-facing protocol, retention, erasure, the reads that retag, diff and similar stream)
is written once here.

A store that cannot be reached never stops tagging:

- a read (``get_many``) that fails is a miss: the image is decoded and encoded as if the
  store were off, and the outage is logged once;
- a write (``record``) is retried with backoff for ``timeout`` seconds (a server restart
  takes a few); if the store is still away, the images are counted as unrecorded, one
  line is logged per write (with the job id), and ``record`` returns their number. The
  caller's results are unaffected: the queue saves them in the job store as usual.
- while it is away, reads skip the store and, once the outage is ``timeout`` old, so do
  writes, except for one attempt (a probe) :data:`PROBE_INTERVAL` seconds after the last
  one, so tagging does not slow down to the store's timeouts.

Administrative calls (``stats``, ``purge``, ``forget``, the reads of retag) raise
:class:`~zstagger.errors.StoreUnavailableError` instead: one clear line for the command.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from ..embedding_cache import EmbeddingKey, ImageSighting
from ..embedding_cache.images import to_fp16
from ..errors import StoreError, StoreUnavailableError
from ..media import MediaRecord
from ..settings import redact_url
from .schema import SCHEMA_VERSION, VERSION_TABLE, migrations

log = logging.getLogger(__name__)
T = TypeVar("T")

PROBE_INTERVAL = 5.0  # while the store is away: seconds from the end of one attempt to reach it to the next
_IN_CHUNK = 500  # values per IN (...) list


@dataclass(frozen=True)
class StoredModel:
    """One (model, preprocessing mode) the store holds embeddings of."""

    id: int
    fingerprint: str
    mode: str
    name: str
    dim: int
    images: int = 0
    embeddings: int = 0


@dataclass
class StoredBatch:
    """A page of stored images in id order: their references and fp16 embeddings (one row each).

    An animation or video has no embedding of its own: its row of ``vectors`` is zeros and
    ``media`` holds, by row, the frames judged (:class:`~zstagger.media.MediaRecord`)."""

    ids: np.ndarray
    references: list[str]
    vectors: np.ndarray  # (n, dim) float16
    media: dict[int, MediaRecord] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredImage:
    reference: str
    sha256: str
    job_id: str
    seen: float


@dataclass(frozen=True)
class Erasure:
    """What ``forget`` removed."""

    images: int  # rows of zstagger_images
    embeddings: int  # rows of zstagger_embeddings
    erased: list[str]  # SHA-256s whose embeddings are gone (every model): clear them from caches too
    kept: list[str]  # SHA-256s of forgotten references still used by other references: embeddings kept
    unmatched: list[str] = field(default_factory=list)  # references and SHA-256s that matched nothing


@dataclass
class _Records:
    """One model's share of a write: new embeddings by hash, image rows by (job, reference)."""

    fresh: dict[bytes, bytes] = field(default_factory=dict)
    seen: dict[tuple[str, str], bytes] = field(default_factory=dict)
    media: dict[bytes, MediaRecord] = field(default_factory=dict)  # animations and videos: the frames judged
    dim: int = 0


# -- references as stored -------------------------------------------------------------------

# Names that are not valid UTF-8 (surrogate escapes, as file names hold them) and NUL cannot
# be stored as text; they are written as \uXXXX, and backslashes doubled, so that every name
# reads back exactly. Most names contain neither and are stored as they are.
_NEEDS_ESCAPE = re.compile(r"[\\\x00\ud800-\udfff]")
_ESCAPED = re.compile(r"\\(\\|u[0-9a-f]{4})")


def stored_reference(name: str) -> str:
    if not _NEEDS_ESCAPE.search(name):
        return name
    return _NEEDS_ESCAPE.sub(lambda m: "\\\\" if m.group() == "\\" else f"\\u{ord(m.group()):04x}", name)


def reference_from_store(text: str) -> str:
    if "\\" not in text:
        return text
    return _ESCAPED.sub(lambda m: "\\" if m.group(1) == "\\" else chr(int(m.group(1)[1:], 16)), text)


class Transaction:
    """One transaction in the store's database, handed to :meth:`EmbeddingStore.transaction`'s call.

    For neighbours that keep their own tables beside the store's (the review queue): SQL is
    written with ``?`` placeholders on either backend; :attr:`dialect` says which one it is.
    """

    def __init__(self, store: EmbeddingStore, conn: Any):
        self._store = store
        self._conn = conn
        self.dialect = store.dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run ``sql`` (``?`` placeholders); returns a DB-API cursor (``fetchone``, ``fetchall``)."""
        return self._store._execute(self._conn, sql, params)

    def lock_schema(self) -> None:
        """Keep two concurrent migrations apart until this transaction ends (PostgreSQL: an
        advisory lock; SQLite: the write lock the transaction already holds)."""
        self._store._lock_schema(self._conn)


class EmbeddingStore:
    """The embedding store: image embeddings plus a record of every image seen.

    Implements the tagger's :class:`~zstagger.embedding_cache.ImageRecorder` protocol
    (``get_many``, ``put_many``, ``record``), so a :class:`~zstagger.Tagger` given one skips
    images whose bytes it has embedded before and records every image it tags.
    """

    dialect = ""
    record_in_transaction = True  # False where a backend writes a chunk in one atomic statement
    _model_filter = "i.model_id = ?"  # how stored-image queries select a model (see SQLiteStore)

    def __init__(self, url: str, timeout: float = 20.0):
        self.url = url
        self.where = redact_url(url)
        self.timeout = timeout
        self._models: dict[tuple[str, str], int] = {}
        self._state = threading.Lock()
        self._away_since: float | None = None  # monotonic time of the failure that made it away
        self._last_probe = 0.0
        self._read_warned = False

    # -- for a backend ---------------------------------------------------------------------

    def _session(self, write: bool, check_schema: bool = True) -> contextlib.AbstractContextManager[Any]:
        """A connection; with ``write``, inside one transaction (committed on success). The
        schema version is checked on the first connection unless ``check_schema`` is False."""
        raise NotImplementedError

    def _execute(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run ``sql`` (written with ``?`` placeholders); returns a cursor."""
        raise NotImplementedError

    def _any(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """``column IN (...)`` for this backend: SQL and its parameters."""
        raise NotImplementedError

    def _write(self, conn: Any, model_id: int, embeddings: list[tuple[bytes, bytes]], images: list[tuple[bytes, str, str]],
               now: float) -> None:
        """Insert new embeddings (sha256, fp16 bytes) and upsert image rows (sha256, reference, job id), at once."""
        raise NotImplementedError

    def _classify(self, exc: Exception) -> str | None:
        """``"away"`` for an unreachable store, ``"schema"`` for missing tables, ``"read_only"`` for a
        store that may be read but not written, None for other errors."""
        raise NotImplementedError

    def _read_only_advice(self) -> str:
        """What to do about a store that refuses writes (the end of the error line)."""
        return "make it writable, or point ZSTAGGER_STORE at one that is"

    def _lock_schema(self, conn: Any) -> None:
        """Keep two concurrent migrations apart (the connection is inside a transaction)."""

    def size_bytes(self) -> int | None:
        return None

    def _after_erasure(self) -> None:
        """After rows were deleted: make sure no copy of their bytes lingers where the backend can reach it."""

    def close(self) -> None:
        pass

    # -- the tagger's protocol ---------------------------------------------------------------

    def get_many(self, keys: Sequence[EmbeddingKey]) -> dict[EmbeddingKey, np.ndarray]:
        """Stored embeddings of those keys that have one (float32); {} while the store is away."""
        if not keys or not self._may_try():
            return {}
        groups: dict[tuple[str, str], list[str]] = {}
        for key in keys:
            groups.setdefault((key.model, key.mode), []).append(key.sha256)

        def read(conn) -> dict[EmbeddingKey, np.ndarray]:
            found = {}
            for (fingerprint, mode), digests in groups.items():
                model_id = self._model_id(conn, fingerprint, mode)
                if model_id is None:
                    continue
                for start in range(0, len(digests), _IN_CHUNK):
                    where, params = self._any("sha256", [bytes.fromhex(d) for d in digests[start : start + _IN_CHUNK]])
                    rows = self._execute(conn, f"SELECT sha256, vector FROM zstagger_embeddings WHERE model_id = ? AND {where}",
                                         [model_id, *params])
                    for digest, blob in rows:
                        found[EmbeddingKey(bytes(digest).hex(), fingerprint, mode)] = np.frombuffer(blob, "<f2").astype(np.float32)
            return found

        try:
            return self._run(read)
        except StoreError as exc:
            if not self._read_warned:
                self._read_warned = True
                log.warning("zstagger: %s; tagging goes on without it (images are read and encoded)", exc)
            return {}

    def put_many(self, items: Sequence[tuple[EmbeddingKey, np.ndarray]]) -> None:
        """Store embeddings without recording images (the plain image-cache protocol)."""
        self.record([ImageSighting(key, "", "", vector) for key, vector in items], images=False)

    def record(self, sightings: Sequence[ImageSighting], model_name: str = "", *, images: bool = True) -> int:
        """Record images seen, and the embeddings computed for them, in one transaction.

        Idempotent: an image of a job is one row per (model, job, reference), rewritten
        when recorded again; an embedding already stored is kept. Returns how many images
        could not be recorded (0, or all of them when the store stayed away for ``timeout``).
        """
        if not sightings:
            return 0
        groups: dict[tuple[str, str], _Records] = {}
        for s in sightings:
            group = groups.setdefault((s.key.model, s.key.mode), _Records())
            digest = bytes.fromhex(s.key.sha256)
            if s.vector is not None:
                group.fresh[digest] = to_fp16(s.vector).tobytes()
                group.dim = int(s.vector.shape[-1])
            if s.media is not None:
                group.media[digest] = s.media
                group.dim = int(s.media.vectors.shape[-1])
            if images:
                group.seen[(s.job_id, stored_reference(s.reference))] = digest  # the last one wins, as an upsert would
        now = time.time()

        def write(conn) -> None:
            for (fingerprint, mode), group in groups.items():
                model_id = self._model_id(conn, fingerprint, mode, name=model_name, dim=group.dim or None)
                if model_id is None:  # only hits, of a model this store does not know (purged meanwhile)
                    continue
                for digest, record in group.media.items():
                    self._write_media(conn, model_id, digest, record, now)
                self._write(conn, model_id, list(group.fresh.items()),
                            [(digest, reference, job) for (job, reference), digest in group.seen.items()], now)

        if not self._may_try(patience=self.timeout):
            self._unrecorded(sightings, f"it has been unreachable for over {self.timeout:g}s (ZSTAGGER_STORE_TIMEOUT)")
            return len(sightings) if images else 0
        try:
            self._run(write, write=self.record_in_transaction, patient=True)
        except StoreError as exc:
            self._unrecorded(sightings, str(exc))
            return len(sightings) if images else 0
        return 0

    # -- animations and videos: the frames judged --------------------------------------------------

    def get_media(self, key: EmbeddingKey) -> MediaRecord | None:
        """The frames kept of the animation or video whose bytes hash to ``key.sha256`` (judged with
        ``key``'s model), or None: not kept, or the store is away (then it is decoded again).
        :meth:`record` keeps them: a sighting with ``media`` (a record replaces a stored one when
        it is ``complete`` or sampled otherwise, never with less of the same judgement)."""
        if not self._may_try():
            return None

        def read(conn) -> MediaRecord | None:
            model_id = self._model_id(conn, key.model, key.mode)
            if model_id is None:
                return None
            row = self._execute(conn, f"SELECT {_MEDIA_COLUMNS} FROM zstagger_media m WHERE m.model_id = ? AND m.sha256 = ?",
                                [model_id, bytes.fromhex(key.sha256)]).fetchone()
            return _media_record(row) if row is not None else None

        try:
            return self._run(read)
        except StoreError as exc:
            if not self._read_warned:
                self._read_warned = True
                log.warning("zstagger: %s; tagging goes on without it (media are decoded)", exc)
            return None

    def _write_media(self, conn: Any, model_id: int, digest: bytes, record: MediaRecord, now: float) -> None:
        self._execute(conn, _UPSERT_MEDIA, [
            model_id, digest, record.kind, record.sampling, record.times.astype("<f8").tobytes(),
            record.indices.astype("<i8").tobytes(), record.rows.astype("<i4").tobytes(),
            np.ascontiguousarray(record.vectors, dtype="<f2").tobytes(), int(record.vectors.shape[1]), record.duration,
            int(record.frames_decoded),
            int(record.truncated), int(record.complete), now])

    def _unrecorded(self, sightings: Sequence[ImageSighting], why: str) -> None:
        jobs = sorted({s.job_id for s in sightings if s.job_id})
        log.warning("zstagger: embedding store: %d images tagged but not recorded%s: %s", len(sightings),
                    f" (job {', '.join(jobs)})" if jobs else "", why)

    # -- models --------------------------------------------------------------------------------

    def _model_id(self, conn, fingerprint: str, mode: str, name: str = "", dim: int | None = None) -> int | None:
        """The id of (fingerprint, mode); created when ``dim`` is given."""
        key = (fingerprint, mode)
        if key in self._models:
            return self._models[key]
        sql = "SELECT id FROM zstagger_models WHERE fingerprint = ? AND mode = ?"
        row = self._execute(conn, sql, [fingerprint, mode]).fetchone()
        if row is None and dim is not None:
            self._execute(conn, "INSERT INTO zstagger_models (fingerprint, mode, name, dim, created) VALUES (?, ?, ?, ?, ?) "
                                "ON CONFLICT (fingerprint, mode) DO NOTHING", [fingerprint, mode, name, dim, time.time()])
            row = self._execute(conn, sql, [fingerprint, mode]).fetchone()
        if row is None:
            return None
        self._models[key] = int(row[0])
        return self._models[key]

    def models(self) -> list[StoredModel]:
        """Every (model, mode) the store holds, with its image and embedding counts."""

        def read(conn) -> list[StoredModel]:
            rows = self._execute(conn, "SELECT id, fingerprint, mode, name, dim FROM zstagger_models ORDER BY id").fetchall()
            images = dict(self._execute(conn, "SELECT model_id, count(*) FROM zstagger_images GROUP BY model_id").fetchall())
            embeds = dict(self._execute(conn, "SELECT model_id, count(*) FROM zstagger_embeddings GROUP BY model_id").fetchall())
            return [StoredModel(int(i), f, m, n, int(d), int(images.get(i, 0)), int(embeds.get(i, 0))) for i, f, m, n, d in rows]

        return self._run(read)

    def find_model(self, fingerprint: str, mode: str) -> StoredModel | None:
        return next((m for m in self.models() if m.fingerprint == fingerprint and m.mode == mode), None)

    # -- schema ----------------------------------------------------------------------------------

    def migrate(self) -> tuple[int, int]:
        """Create or upgrade the schema (``zstagger store init``); returns (version before, version now)."""

        def apply(conn) -> tuple[int, int]:
            self._lock_schema(conn)
            self._execute(conn, VERSION_TABLE[self.dialect])
            before = int(self._execute(conn, "SELECT coalesce(max(version), 0) FROM zstagger_schema").fetchone()[0])
            if before > SCHEMA_VERSION:
                raise StoreError(self._too_new(before))
            for version, statements in enumerate(migrations(self.dialect), start=1):
                if version > before:
                    for statement in statements:
                        self._execute(conn, statement)
                    self._execute(conn, "INSERT INTO zstagger_schema (version, applied) VALUES (?, ?)", [version, time.time()])
            return before, SCHEMA_VERSION

        return self._run(apply, write=True, check_schema=False)

    def schema_version(self, conn) -> int:
        """The version applied (0: none), read on ``conn``."""
        try:
            row = self._execute(conn, "SELECT max(version) FROM zstagger_schema").fetchone()
        except Exception as exc:
            if self._classify(exc) == "schema":
                return 0
            raise
        return int(row[0] or 0)

    def _check_schema(self, version: int) -> None:
        if version == 0:
            raise StoreError(f"the embedding store at {self.where} has no zstagger tables yet: run `zstagger store init` "
                             "(with ZSTAGGER_STORE set to it) once, then start the workers")
        if version < SCHEMA_VERSION:
            raise StoreError(f"the embedding store at {self.where} has schema version {version}; this zstagger needs "
                             f"{SCHEMA_VERSION}: run `zstagger store init` to migrate it")
        if version > SCHEMA_VERSION:
            raise StoreError(self._too_new(version))

    def _too_new(self, version: int) -> str:
        return (f"the embedding store at {self.where} has schema version {version}, newer than this zstagger knows "
                f"({SCHEMA_VERSION}): upgrade zstagger")

    # -- running a call, and what happens when the store is away ---------------------------------

    def _may_try(self, patience: float = 0.0) -> bool:
        """False while the store has been away for more than ``patience`` seconds, except for one
        probe every PROBE_INTERVAL seconds."""
        with self._state:
            now = time.monotonic()
            if self._away_since is None or now - self._away_since < patience:
                return True
            if now - self._last_probe >= PROBE_INTERVAL:
                self._last_probe = now
                return True
            return False

    def _run(self, call: Callable[[Any], T], *, write: bool = False, patient: bool = False, check_schema: bool = True) -> T:
        """``call(connection)``, retried with backoff for ``timeout`` seconds if ``patient`` and
        the store was reachable until now; raises StoreError (StoreUnavailableError when away)."""
        # Patience runs from the start of an outage, so a store restarting under a stream of writes
        # loses none of them, and one that stays away costs each write nothing after the first timeout.
        away_since = self._away_since
        deadline = ((away_since if away_since is not None else time.monotonic()) + self.timeout) if patient else 0.0
        delay = 0.25
        # A pooled connection the server dropped (it restarted) fails once: try a new one at once,
        # unless the store is known to be away (then this is a probe: one attempt).
        fresh_try = away_since is None
        while True:
            try:
                with self._session(write, check_schema) as conn:
                    result = call(conn)
            except StoreError:
                raise
            except Exception as exc:
                kind = self._classify(exc)
                if kind == "schema":
                    raise StoreError(f"the embedding store at {self.where} has no zstagger tables: run `zstagger store init` "
                                     "(with ZSTAGGER_STORE set to it)") from exc
                if kind == "read_only":  # not an outage: waiting will not help
                    raise StoreError(f"the embedding store at {self.where} is read-only ({type(exc).__name__}: "
                                     f"{_first_line(exc)}): {self._read_only_advice()}") from exc
                if kind != "away":
                    raise StoreError(f"embedding store {self.where}: {type(exc).__name__}: {_first_line(exc)}") from exc
                if fresh_try:
                    fresh_try = False
                    continue
                if time.monotonic() + delay <= deadline:
                    time.sleep(delay)
                    delay = min(2 * delay, 4.0)
                    continue
                with self._state:
                    self._last_probe = time.monotonic()  # the next probe waits PROBE_INTERVAL from now
                    if self._away_since is None:
                        self._away_since = self._last_probe
                raise StoreUnavailableError(
                    f"cannot reach the embedding store at {self.where} ({type(exc).__name__}: {_first_line(exc)}); "
                    "start it, or point ZSTAGGER_STORE at yours"
                ) from exc
            with self._state:
                if self._away_since is not None:
                    log.warning("zstagger: embedding store %s answers again after %.0fs", self.where,
                                time.monotonic() - self._away_since)
                    self._away_since = None
                    self._read_warned = False
            return result

    # -- for neighbours with their own tables in this database (the review queue) -------------

    def transaction(self, call: Callable[[Transaction], T], *, write: bool = False) -> T:
        """``call(transaction)`` in one transaction (committed when it returns, with ``write``),
        whatever the store's own schema version; a failure raises StoreError
        (StoreUnavailableError when the database is away), after nothing was written."""
        return self._run(lambda conn: call(Transaction(self, conn)), write=write, check_schema=False)

    # -- retention and erasure ----------------------------------------------------------------

    def purge(self, before: float, dry_run: bool = False) -> tuple[int, int]:
        """Delete images last seen before ``before`` (Unix seconds), then embeddings that no image
        uses any more (and that are older than ``before``); returns (images, embeddings) deleted."""

        def apply(conn) -> tuple[int, int]:
            if dry_run:
                images = self._execute(conn, "SELECT count(*) FROM zstagger_images WHERE seen < ?", [before]).fetchone()[0]
                embeds = sum(self._execute(conn, f"SELECT count(*) FROM {table} e WHERE created < ? AND NOT EXISTS "
                                                 "(SELECT 1 FROM zstagger_images i WHERE i.model_id = e.model_id AND "
                                                 "i.sha256 = e.sha256 AND i.seen >= ?)", [before, before]).fetchone()[0]
                             for table in ("zstagger_embeddings", "zstagger_media"))
                return int(images), int(embeds)
            images = self._execute(conn, "DELETE FROM zstagger_images WHERE seen < ?", [before]).rowcount
            embeds = self._execute(conn, "DELETE FROM zstagger_embeddings WHERE created < ? AND NOT EXISTS (SELECT 1 FROM "
                                         "zstagger_images i WHERE i.model_id = zstagger_embeddings.model_id AND "
                                         "i.sha256 = zstagger_embeddings.sha256)", [before]).rowcount
            embeds += self._execute(conn, "DELETE FROM zstagger_media WHERE created < ? AND NOT EXISTS (SELECT 1 FROM "
                                          "zstagger_images i WHERE i.model_id = zstagger_media.model_id AND "
                                          "i.sha256 = zstagger_media.sha256)", [before]).rowcount
            return int(images), int(embeds)

        counts = self._run(apply, write=True)
        if not dry_run:
            self._after_erasure()
        return counts

    def forget(self, references: Sequence[str] = (), sha256s: Sequence[str] = ()) -> Erasure:
        """Erase images by reference or by content hash, in one transaction.

        By hash: every image with that content and its embedding (every model) go. By
        reference: that reference's images go, and their embeddings unless another
        reference still has the same content (then the embedding is no longer linked to the
        forgotten reference; ``forget(sha256s=...)`` removes it as well).
        """
        refs = [stored_reference(r) for r in references]
        hashes = [bytes.fromhex(h) for h in sha256s]

        def apply(conn) -> Erasure:
            of_refs: set[bytes] = set()
            found_refs: set[str] = set()
            found_hashes: set[bytes] = set()
            images = 0
            for start in range(0, len(refs), _IN_CHUNK):
                where, params = self._any("reference", refs[start : start + _IN_CHUNK])
                for reference, digest in self._execute(conn, f"SELECT DISTINCT reference, sha256 FROM zstagger_images WHERE {where}",
                                                       params):
                    found_refs.add(reference)
                    of_refs.add(bytes(digest))
                images += self._execute(conn, f"DELETE FROM zstagger_images WHERE {where}", params).rowcount
            for start in range(0, len(hashes), _IN_CHUNK):
                where, params = self._any("sha256", hashes[start : start + _IN_CHUNK])
                for table in ("zstagger_images", "zstagger_embeddings", "zstagger_media"):  # an embedding may outlive its images
                    found_hashes.update(bytes(r[0]) for r in self._execute(
                        conn, f"SELECT DISTINCT sha256 FROM {table} WHERE {where}", params))
                images += self._execute(conn, f"DELETE FROM zstagger_images WHERE {where}", params).rowcount
            still_used: set[bytes] = set()
            candidates = sorted(of_refs - set(hashes))
            for start in range(0, len(candidates), _IN_CHUNK):
                where, params = self._any("sha256", candidates[start : start + _IN_CHUNK])
                still_used.update(bytes(r[0]) for r in self._execute(conn, f"SELECT DISTINCT sha256 FROM zstagger_images WHERE {where}",
                                                                     params))
            erased = sorted(set(hashes) | (of_refs - still_used))
            embeddings = 0
            for start in range(0, len(erased), _IN_CHUNK):
                where, params = self._any("sha256", erased[start : start + _IN_CHUNK])
                embeddings += self._execute(conn, f"DELETE FROM zstagger_embeddings WHERE {where}", params).rowcount
                embeddings += self._execute(conn, f"DELETE FROM zstagger_media WHERE {where}", params).rowcount
            unmatched = [given for given, stored in zip(references, refs) if stored not in found_refs]
            unmatched += [h.hex() for h in hashes if h not in found_hashes]
            return Erasure(images, embeddings, [h.hex() for h in erased], sorted(h.hex() for h in still_used), unmatched)

        erasure = self._run(apply, write=True)
        self._after_erasure()
        return erasure

    # -- reads for retag, diff, similar and stats -------------------------------------------------

    def last_image_id(self) -> int:
        return int(self._run(lambda conn: self._execute(conn, "SELECT coalesce(max(id), 0) FROM zstagger_images").fetchone()[0]))

    def _filters(self, model_id: int, since: float | None, job_id: str | None, upto: int | None) -> tuple[str, list[Any]]:
        where, params = [self._model_filter], [model_id]
        for clause, value in (("i.seen >= ?", since), ("i.job_id = ?", job_id), ("i.id <= ?", upto)):
            if value is not None:
                where.append(clause)
                params.append(value)
        return " AND ".join(where), params

    def count_images(self, model_id: int, *, since: float | None = None, job_id: str | None = None,
                     upto: int | None = None) -> int:
        where, params = self._filters(model_id, since, job_id, upto)
        sql = (f"SELECT count(*) FROM zstagger_images i LEFT JOIN zstagger_embeddings e ON e.model_id = i.model_id "
               f"AND e.sha256 = i.sha256 LEFT JOIN zstagger_media m ON m.model_id = i.model_id AND m.sha256 = i.sha256 "
               f"WHERE {where} AND (e.sha256 IS NOT NULL OR m.sha256 IS NOT NULL)")
        return int(self._run(lambda conn: self._execute(conn, sql, params).fetchone()[0]))

    def page_bounds(self, model_id: int, *, since: float | None = None, job_id: str | None = None, upto: int | None = None,
                    page: int = 10_000) -> list[int]:
        """Image ids that cut the selected images into pages of ``page`` (every page-th id, in order):
        pages ``(0, b1], (b1, b2], ..., (bk, upto]`` that separate processes can read."""
        where, params = self._filters(model_id, since, job_id, upto)
        sql = (f"SELECT id FROM (SELECT i.id AS id, row_number() OVER (ORDER BY i.id) AS n FROM zstagger_images i "
               f"WHERE {where}) AS numbered WHERE n = (n / ?) * ? ORDER BY id")  # every page-th row, in both dialects
        return [int(row[0]) for row in self._run(lambda conn: self._execute(conn, sql, [*params, page, page]).fetchall())]

    def iter_images(self, model_id: int, *, since: float | None = None, job_id: str | None = None, upto: int | None = None,
                    page: int = 10_000, after: int = 0) -> Iterator[StoredBatch]:
        """Stored images of one model with their embeddings, in id order (the order they were first
        recorded), ids after ``after`` up to ``upto``, a page per query so that writers are never held up.
        Animations and videos come in their place with the frames kept of them (``StoredBatch.media``)."""
        where, params = self._filters(model_id, since, job_id, upto)
        sql = (f"SELECT i.id, i.reference, e.vector, m.model_id FROM zstagger_images i LEFT JOIN zstagger_embeddings e "
               f"ON e.model_id = i.model_id AND e.sha256 = i.sha256 LEFT JOIN zstagger_media m ON m.model_id = i.model_id "
               f"AND m.sha256 = i.sha256 WHERE {where} AND i.id > ? AND (e.sha256 IS NOT NULL OR m.sha256 IS NOT NULL) "
               f"ORDER BY i.id LIMIT ?")
        media_sql = (f"SELECT i.id, {_MEDIA_COLUMNS} FROM zstagger_images i JOIN zstagger_media m ON m.model_id = i.model_id "
                     f"AND m.sha256 = i.sha256 WHERE {where} AND i.id > ? AND i.id <= ?")
        while True:
            rows = self._run(lambda conn, after=after: self._execute(conn, sql, [*params, after, page]).fetchall())
            if not rows:
                return
            ids, refs, blobs, media = zip(*rows)
            dim = next((len(b) // 2 for b in blobs if b is not None), None)
            records: dict[int, MediaRecord] = {}
            if any(m is not None for m in media):
                found = self._run(lambda conn, after=after: self._execute(
                    conn, media_sql, [*params, after, int(ids[-1])]).fetchall())
                by_id = {int(row[0]): _media_record(row[1:]) for row in found}
                position = {int(i): n for n, i in enumerate(ids)}
                records = {position[i]: record for i, record in by_id.items() if i in position}
                if dim is None:
                    dim = next(iter(records.values())).vectors.shape[1]
            empty = bytes(2 * dim)  # type: ignore[operator]
            vectors = np.frombuffer(b"".join(b if b is not None else empty for b in blobs), dtype="<f2").reshape(len(rows), dim)
            yield StoredBatch(np.asarray(ids, dtype=np.int64), [reference_from_store(r) for r in refs], vectors, records)
            after = int(ids[-1])
            if len(rows) < page:
                return

    def iter_embeddings(self, model_id: int, page: int = 20_000) -> Iterator[tuple[list[str], np.ndarray]]:
        """Every stored embedding of one model: (SHA-256s, (n, dim) float16), a page at a time."""
        sql = "SELECT sha256, vector FROM zstagger_embeddings WHERE model_id = ? AND sha256 > ? ORDER BY sha256 LIMIT ?"
        after = b""
        while True:
            rows = self._run(lambda conn, after=after: self._execute(conn, sql, [model_id, after, page]).fetchall())
            if not rows:
                return
            digests, blobs = zip(*rows)
            dim = len(blobs[0]) // 2
            yield [bytes(d).hex() for d in digests], np.frombuffer(b"".join(blobs), dtype="<f2").reshape(len(rows), dim)
            after = bytes(digests[-1])
            if len(rows) < page:
                return

    def images_with(self, model_id: int, sha256s: Sequence[str], limit: int = 20) -> dict[str, tuple[int, list[StoredImage]]]:
        """Per content hash: how many stored images have it, and the ``limit`` most recently seen."""

        def read(conn) -> dict[str, tuple[int, list[StoredImage]]]:
            found: dict[str, tuple[int, list[StoredImage]]] = {}
            hashes = [bytes.fromhex(h) for h in sha256s]
            for start in range(0, len(hashes), _IN_CHUNK):
                where, params = self._any("sha256", hashes[start : start + _IN_CHUNK])
                rows = self._execute(conn, f"SELECT sha256, reference, job_id, seen FROM zstagger_images WHERE model_id = ? "
                                           f"AND {where} ORDER BY seen DESC, id DESC", [model_id, *params])
                for digest, reference, job, seen in rows:
                    count, shown = found.get(bytes(digest).hex(), (0, []))
                    if len(shown) < limit:
                        shown.append(StoredImage(reference_from_store(reference), bytes(digest).hex(), job, float(seen)))
                    found[bytes(digest).hex()] = (count + 1, shown)
            return found

        return self._run(read)

    def stats(self) -> dict[str, Any]:
        """Counts for ``zstagger store stats``."""

        def read(conn) -> dict[str, Any]:
            version = self.schema_version(conn)
            if version == 0:
                return {"schema_version": 0}
            images, jobs, first, last = self._execute(
                conn, "SELECT count(*), count(DISTINCT nullif(job_id, '')), min(seen), max(seen) FROM zstagger_images").fetchone()
            embeddings = self._execute(conn, "SELECT count(*) FROM zstagger_embeddings").fetchone()[0]
            media = self._execute(conn, "SELECT count(*) FROM zstagger_media").fetchone()[0] if version >= 2 else 0
            return {"schema_version": version, "images": int(images), "embeddings": int(embeddings), "media": int(media),
                    "jobs": int(jobs), "first_seen": first, "last_seen": last}

        out = {"store": self.where, "backend": self.dialect, **self._run(read, check_schema=False)}
        if out["schema_version"]:
            out["models"] = [m.__dict__ for m in self.models()]
            out["bytes"] = self.size_bytes()
        return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_MEDIA_COLUMNS = ("m.kind, m.sampling, m.times, m.frame_numbers, m.frame_rows, m.vectors, m.dim, m.duration, "
                  "m.frames_decoded, m.truncated, m.complete")
_UPSERT_MEDIA = (
    "INSERT INTO zstagger_media (model_id, sha256, kind, sampling, times, frame_numbers, frame_rows, vectors, dim, duration, "
    "frames_decoded, truncated, complete, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (model_id, sha256) DO UPDATE SET kind = excluded.kind, sampling = excluded.sampling, times = excluded.times, "
    "frame_numbers = excluded.frame_numbers, frame_rows = excluded.frame_rows, vectors = excluded.vectors, dim = excluded.dim, "
    "duration = excluded.duration, frames_decoded = excluded.frames_decoded, truncated = excluded.truncated, "
    "complete = excluded.complete, created = excluded.created "
    # never replace what was judged with less of it
    "WHERE excluded.complete = 1 OR zstagger_media.complete = 0 OR excluded.sampling <> zstagger_media.sampling"
)


def _media_record(row: Sequence[Any]) -> MediaRecord:
    kind, sampling, times, numbers, rows, vectors, dim, duration, decoded, truncated, complete = row
    times = np.frombuffer(bytes(times), dtype="<f8")
    vectors = np.frombuffer(bytes(vectors), dtype="<f2")
    return MediaRecord(kind, sampling, times, np.frombuffer(bytes(numbers), dtype="<i8"),
                       np.frombuffer(bytes(rows), dtype="<i4").astype(np.int64), vectors.reshape(-1, int(dim)),
                       None if duration is None else float(duration), int(decoded), bool(truncated), bool(complete))
