"""The embedded default: the embedding store in one SQLite file, no server.

WAL mode (readers never wait for the writer, a killed process never corrupts the file),
one transaction per write, ``busy_timeout`` for a second process holding the write lock.
Deleted rows are overwritten (``secure_delete``) and the log emptied after an erasure, so
a forgotten image's embedding is not left in the file.
The schema is created or migrated when the file is first opened (``zstagger store init``
does the same explicitly). Each process opens its own connection (a forked worker too);
the threads of one process share it under a lock.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .base import EmbeddingStore
from .schema import SCHEMA_VERSION


class SQLiteStore(EmbeddingStore):
    dialect = "sqlite"
    # Pages of stored images walk the rowid; without statistics SQLite would rather use the
    # (model, job, reference) index and sort everything for each page. ``+`` keeps it off that index.
    _model_filter = "+i.model_id = ?"

    def __init__(self, url: str, path: str | os.PathLike, timeout: float = 20.0):
        super().__init__(url, timeout)
        self.path = Path(path).expanduser()
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            # 1 KiB embeddings fill 16 KiB pages to 93% (4 KiB pages: 3 rows, 75%); only a new file takes it
            conn.execute("PRAGMA page_size = 16384")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable against a killed process
            conn.execute("PRAGMA secure_delete = ON")  # erased images leave no bytes behind in free pages
            self._conn, self._pid = conn, os.getpid()
            if self.schema_version(conn) < SCHEMA_VERSION:
                self.migrate()  # the embedded store sets itself up
            else:
                self._check_schema(self.schema_version(conn))
        except BaseException:
            conn.close()
            self._conn = None
            raise
        return conn

    @contextlib.contextmanager
    def _session(self, write: bool, check_schema: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connection()
            if not write:
                yield conn
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _execute(self, conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return conn.execute(sql, params)

    def _any(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} IN ({','.join('?' * len(values))})", list(values)

    def _write(self, conn, model_id, embeddings, images, now) -> None:
        if embeddings:
            conn.executemany("INSERT INTO zstagger_embeddings (model_id, sha256, vector, created) VALUES (?, ?, ?, ?) "
                             "ON CONFLICT (model_id, sha256) DO NOTHING",
                             [(model_id, digest, vector, now) for digest, vector in embeddings])
        if images:
            conn.executemany("INSERT INTO zstagger_images (model_id, sha256, reference, job_id, seen) VALUES (?, ?, ?, ?, ?) "
                             "ON CONFLICT (model_id, job_id, reference) DO UPDATE SET sha256 = excluded.sha256, seen = excluded.seen",
                             [(model_id, digest, reference, job, now) for digest, reference, job in images])

    def _classify(self, exc: Exception) -> str | None:
        if isinstance(exc, sqlite3.OperationalError):
            text = str(exc)
            if "no such table" in text:
                return "schema"
            if "readonly database" in text:  # SQLITE_READONLY: the file (or its -wal/-shm) cannot be written
                return "read_only"
            if any(sign in text for sign in ("locked", "busy", "unable to open", "disk I/O", "full")):
                return "away"
        if isinstance(exc, OSError):  # the directory cannot be created
            return "away"
        return None

    def _read_only_advice(self) -> str:
        return (f"make {self.path} and its directory writable by this user (SQLite writes {self.path.name}-wal and "
                f"{self.path.name}-shm beside it), or point ZSTAGGER_STORE at a writable file")

    def _after_erasure(self) -> None:
        # Older copies of the deleted pages may still sit in the write-ahead log: fold it in and empty it.
        with self._lock:
            self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def size_bytes(self) -> int | None:
        return sum(os.path.getsize(p) for p in (self.path, Path(f"{self.path}-wal")) if os.path.exists(p))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
