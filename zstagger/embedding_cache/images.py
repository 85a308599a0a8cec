"""Image embeddings cached in one SQLite file: each image is encoded once per model.

Key: the SHA-256 of the image's bytes (not its path: a renamed or re-uploaded copy is a
hit, an edited file a miss), the model fingerprint and the preprocessing mode (``fast``
or ``exact``, which give slightly different pixels). Value: the unit embedding as fp16
(a 512-d vector is 1 KiB; fp16 moves cosines by < 1e-3).

Safe with several processes at once and with a process killed mid-write: the database
runs in WAL mode (readers never block the writer), every ``put_many`` is one
transaction (``INSERT OR IGNORE``: two processes that embed the same image agree on the
value anyway), and a writer waits up to ``busy_timeout`` seconds for another's lock.
A cache that cannot be read or written (full disk, read-only directory, damaged file)
is logged once and skipped: tagging never fails because of it.

Local files also get a digest index, as git's index does: a file whose path, device,
inode, size, modification and change times (nanoseconds) are all as when it was last
hashed keeps its SHA-256 without being read again, so a fully cached run reads no image
bytes. Any write to a file changes its change time (which no tool can set back), so an
edited file is read and hashed afresh.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from ..media import MediaRecord

log = logging.getLogger(__name__)

FILENAME = "image-embeddings.sqlite3"
_SCHEMA_VERSION = 2
_IN_CHUNK = 500  # keys per SELECT ... IN (...): well under SQLite's variable limit


class EmbeddingKey(NamedTuple):
    """What an image embedding depends on."""

    sha256: str  # hex digest of the image's bytes
    model: str  # model fingerprint (zstagger.engine.locate.model_fingerprint)
    mode: str  # preprocessing: "fast" or "exact"


@runtime_checkable
class ImageEmbeddingCache(Protocol):
    """What the embedder needs from an image-embedding cache or store (:class:`zstagger.embedder.CacheRoute`)."""

    def get_many(self, keys: Sequence[EmbeddingKey]) -> dict[EmbeddingKey, np.ndarray]:
        """The stored embeddings (float32, unit rows) of those keys that have one."""
        ...

    def put_many(self, items: Sequence[tuple[EmbeddingKey, np.ndarray]]) -> None:
        """Store embeddings; keys already present keep their value."""
        ...


class ImageSighting(NamedTuple):
    """One image a tagger read, for a store that keeps a record of them (:class:`ImageRecorder`)."""

    key: EmbeddingKey
    reference: str  # as results name it (path, URL, upload name, bytes:sha256:...)
    job_id: str  # "" when not tagged in a queued job
    vector: np.ndarray | None  # the embedding just computed, or None when it came from the store
    media: MediaRecord | None = None  # an animation or video: the frames judged (None: kept already)


@runtime_checkable
class ImageRecorder(ImageEmbeddingCache, Protocol):
    """An :class:`ImageEmbeddingCache` that also records every image seen (the embedding store).

    The embedder hands it a chunk's images in one call, with the name of the model that
    embedded them (as the user gave it: the key's fingerprint says which model it is, the
    name is for people); it writes them in one transaction, idempotently (the same image of
    the same job recorded twice is one record), and never raises for a store that is
    unreachable: it returns how many images it could not record.
    """

    def record(self, sightings: Sequence[ImageSighting], model_name: str) -> int:
        ...


class SQLiteImageCache:
    """The embedded default :class:`ImageEmbeddingCache`: one SQLite file, no server."""

    def __init__(self, path: str | os.PathLike, busy_timeout: float = 30.0):
        self.path = Path(path).expanduser()
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._disabled = False
        self._warned: set[str] = set()

    # -- the protocol ------------------------------------------------------------------

    def get_many(self, keys: Sequence[EmbeddingKey]) -> dict[EmbeddingKey, np.ndarray]:
        found: dict[EmbeddingKey, np.ndarray] = {}
        groups: dict[tuple[str, str], list[str]] = {}
        for key in keys:
            groups.setdefault((key.model, key.mode), []).append(key.sha256)
        with self._lock:
            conn = self._connection()
            if conn is None:
                return found
            try:
                for (model, mode), digests in groups.items():
                    for start in range(0, len(digests), _IN_CHUNK):
                        chunk = digests[start : start + _IN_CHUNK]
                        rows = conn.execute(
                            "SELECT sha256, dim, vector FROM image_embeddings WHERE model = ? AND mode = ? "
                            f"AND sha256 IN ({','.join('?' * len(chunk))})",
                            (model, mode, *chunk),
                        )
                        for digest, dim, blob in rows:
                            if len(blob) == 2 * dim:  # a short blob would be damage: treat it as a miss
                                found[EmbeddingKey(digest, model, mode)] = np.frombuffer(blob, dtype="<f2").astype(np.float32)
            except sqlite3.Error as exc:
                self._trouble("read", exc)
        return found

    def put_many(self, items: Sequence[tuple[EmbeddingKey, np.ndarray]]) -> None:
        rows = [
            (key.sha256, key.model, key.mode, int(vector.shape[-1]), to_fp16(vector).tobytes(), time.time())
            for key, vector in items
        ]
        self._write(
            "INSERT OR IGNORE INTO image_embeddings (sha256, model, mode, dim, vector, created) VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )

    # -- the digest index of local files -----------------------------------------------------

    def file_digest(self, path: str, st: os.stat_result | str) -> str | None:
        """The SHA-256 recorded for ``path`` if the file is unchanged since (see the module docstring)."""
        with self._lock:
            conn = self._connection()
            if conn is None:
                return None
            try:
                row = conn.execute("SELECT stat, sha256 FROM file_digests WHERE path = ?", (path,)).fetchone()
            except sqlite3.Error as exc:
                self._trouble("read", exc)
                return None
        return row[1] if row and row[0] == _stat_key(st) else None

    def remember_digests(self, entries: Sequence[tuple[str, os.stat_result | str, str]]) -> None:
        """Record (path, stat taken before reading, SHA-256 of what was read) for local files,
        and (URL, version read before the bytes, SHA-256) for objects in a store."""
        rows = [(path, _stat_key(st), digest) for path, st, digest in entries]
        self._write("INSERT OR REPLACE INTO file_digests (path, stat, sha256) VALUES (?, ?, ?)", rows)

    def _write(self, sql: str, rows: list[tuple]) -> None:
        """One transaction: all of ``rows`` or, if the process dies first, none."""
        if not rows:
            return
        with self._lock:
            conn = self._connection()
            if conn is None:
                return
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(sql, rows)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                self._trouble("write", exc)

    # -- housekeeping --------------------------------------------------------------------

    def forget(self, digests: Sequence[str]) -> int:
        """Delete the embeddings (every model and mode) and digest-index entries of these SHA-256s;
        returns how many embeddings were deleted. Raises ``sqlite3.Error`` (erasure must not fail silently)."""
        if not digests:
            return 0
        with self._lock:
            conn = self._connection()
            if conn is None:
                raise sqlite3.OperationalError(f"cannot open the image-embedding cache {self.path}")
            deleted = 0
            conn.execute("PRAGMA secure_delete = ON")  # an erasure leaves no bytes behind in free pages
            conn.execute("BEGIN IMMEDIATE")
            try:
                for start in range(0, len(digests), _IN_CHUNK):
                    chunk = list(digests[start : start + _IN_CHUNK])
                    marks = ",".join("?" * len(chunk))
                    deleted += conn.execute(f"DELETE FROM image_embeddings WHERE sha256 IN ({marks})", chunk).rowcount
                    conn.execute(f"DELETE FROM file_digests WHERE sha256 IN ({marks})", chunk)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # nor older copies of the pages in the log
            return deleted

    def count(self) -> int:
        with self._lock:
            conn = self._connection()
            return conn.execute("SELECT count(*) FROM image_embeddings").fetchone()[0] if conn else 0

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def _connection(self) -> sqlite3.Connection | None:
        """This process's connection (a forked child opens its own)."""
        if self._disabled:
            return None
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: a killed process never corrupts the file
            if conn.execute("PRAGMA user_version").fetchone()[0] < _SCHEMA_VERSION:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS image_embeddings ("
                    " model TEXT NOT NULL, mode TEXT NOT NULL, sha256 TEXT NOT NULL,"
                    " dim INTEGER NOT NULL, vector BLOB NOT NULL, created REAL NOT NULL,"
                    " PRIMARY KEY (model, mode, sha256)) WITHOUT ROWID"
                )
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS file_digests ("
                    " path TEXT PRIMARY KEY, stat TEXT NOT NULL, sha256 TEXT NOT NULL) WITHOUT ROWID"
                )
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        except (sqlite3.Error, OSError) as exc:
            self._disabled = True
            self._trouble("open", exc)
            return None
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _trouble(self, what: str, exc: Exception) -> None:
        if any(sign in str(exc) for sign in ("not a database", "malformed")):
            self._disabled = True  # a damaged file: stop touching it (delete it to start afresh)
        if what not in self._warned:
            self._warned.add(what)
            log.warning("zstagger: image-embedding cache %s: could not %s it (%s); going on without it", self.path, what, exc)


def _stat_key(st: os.stat_result | str) -> str:
    # A stat taken before reading: if the file changes after, the next stat differs. An object
    # in a store has a version instead (its ETag or generation, and its size).
    if isinstance(st, str):
        return f"version:{st}"
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def to_fp16(vector: np.ndarray) -> np.ndarray:
    """The stored form of an embedding: little-endian fp16."""
    return np.asarray(vector, dtype=np.float32).astype("<f2")


def default_image_cache(cache_dir: str) -> SQLiteImageCache | None:
    """The SQLite cache under ``ZSTAGGER_CACHE_DIR`` (None when the cache is disabled with '')."""
    return SQLiteImageCache(Path(cache_dir).expanduser() / FILENAME) if cache_dir else None

