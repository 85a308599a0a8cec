"""The embedding store on PostgreSQL, for fleets: every worker writes to one server.

psycopg 3 with a ``psycopg_pool`` connection pool per process (created after a fork,
never shared with the parent). The schema is created and migrated by ``zstagger store
init`` (an advisory lock keeps two concurrent inits apart); a worker that finds no schema
says so in its log and tags on without recording.

A chunk's records are one statement (new embeddings and image rows, ``unnest`` of arrays,
``ON CONFLICT``): one round trip, atomic without an explicit transaction. Results are read
in binary, so embeddings arrive as raw bytes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from .base import EmbeddingStore

CONNECT_WAIT = 3.0  # seconds to get a connection (connect, or wait for a free one) before the store counts as away
_SCHEMA_LOCK = 0x7A53_7461  # pg_advisory_xact_lock key: "zSta"
_TYPES = {"sha256": "bytea", "reference": "text", "job_id": "text"}

_RECORD = (
    "WITH fresh AS (INSERT INTO zstagger_embeddings (model_id, sha256, vector, created) "
    "SELECT %(model)s, d, v, %(now)s FROM unnest(%(digests)s::bytea[], %(vectors)s::bytea[]) AS t(d, v) "
    "ON CONFLICT (model_id, sha256) DO NOTHING) "
    "INSERT INTO zstagger_images (model_id, sha256, reference, job_id, seen) "
    "SELECT %(model)s, d, r, j, %(now)s FROM unnest(%(seen)s::bytea[], %(refs)s::text[], %(jobs)s::text[]) AS t(d, r, j) "
    "ON CONFLICT (model_id, job_id, reference) DO UPDATE SET sha256 = excluded.sha256, seen = excluded.seen"
)


class PostgresStore(EmbeddingStore):
    dialect = "postgresql"
    record_in_transaction = False  # one statement: atomic as it is

    def __init__(self, url: str, timeout: float = 20.0, connections: int = 4):
        super().__init__(url, timeout)
        self.connections = max(2, connections)
        self._pool = None
        self._pid = 0
        self._schema_ok = False
        self._pool_lock = threading.Lock()

    def _connections(self):
        with self._pool_lock:
            if self._pool is None or self._pid != os.getpid():
                from psycopg_pool import ConnectionPool

                # The pool logs every failed connection attempt; zstagger reports an outage itself, once.
                logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)

                self._pool = ConnectionPool(
                    self.url, min_size=1, max_size=self.connections, open=False, timeout=CONNECT_WAIT,
                    kwargs={"autocommit": True, "connect_timeout": max(1, int(CONNECT_WAIT))},
                    reconnect_timeout=max(60.0, 3 * self.timeout), name="zstagger-store",
                )
                self._pool.open(wait=False)
                self._pid = os.getpid()
            return self._pool

    @contextlib.contextmanager
    def _session(self, write: bool, check_schema: bool = True) -> Iterator[Any]:
        with self._connections().connection() as conn:
            if check_schema and not self._schema_ok:
                self._check_schema(self.schema_version(conn))
                self._schema_ok = True
            if write:
                with conn.transaction():
                    yield conn
            else:
                yield conn

    def _execute(self, conn, sql: str, params: Sequence[Any] | dict = ()) -> Any:
        return conn.cursor(binary=True).execute(sql.replace("?", "%s") if not isinstance(params, dict) else sql, params)

    def _any(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?::{_TYPES[column]}[])", [list(values)]

    def _write(self, conn, model_id, embeddings, images, now) -> None:
        self._execute(conn, _RECORD, {
            "model": model_id, "now": now,
            "digests": [d for d, _ in embeddings], "vectors": [v for _, v in embeddings],
            "seen": [d for d, _, _ in images], "refs": [r for _, r, _ in images], "jobs": [j for _, _, j in images],
        })

    def _lock_schema(self, conn) -> None:
        self._execute(conn, "SELECT pg_advisory_xact_lock(?)", [_SCHEMA_LOCK])

    def _classify(self, exc: Exception) -> str | None:
        import psycopg

        if isinstance(exc, psycopg.errors.UndefinedTable):
            return "schema"
        if isinstance(exc, (psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.InsufficientPrivilege)):
            return "read_only"
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            return "away"  # refused, timed out, server restarting (AdminShutdown), connection lost; PoolTimeout too
        return None

    def _read_only_advice(self) -> str:
        return ("point ZSTAGGER_STORE at the primary server (not a standby), or let this user write: "
                "default_transaction_read_only off, and INSERT, UPDATE, DELETE granted on the zstagger_* tables")

    def size_bytes(self) -> int | None:
        return int(self._run(lambda conn: self._execute(
            conn, "SELECT coalesce(sum(pg_total_relation_size(to_regclass(t))), 0) FROM unnest(?::text[]) AS t",
            [["zstagger_images", "zstagger_embeddings", "zstagger_models", "zstagger_schema"]]).fetchone()[0]))

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None and self._pid == os.getpid():
                self._pool.close(timeout=5)
            self._pool = None
