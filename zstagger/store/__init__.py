"""The embedding store: every image a tagger saw, with its embedding, in SQLite or PostgreSQL.

Per image: the SHA-256 of its bytes, its reference (as results name it), the model
fingerprint and preprocessing mode, the fp16 embedding (one per distinct content), the job
id if any, and when it was last seen. Opt-in with ``ZSTAGGER_STORE`` (a URL, see
:func:`open_store`); one schema (:mod:`.schema`), two backends (:mod:`.sqlite`, the
embedded default, and :mod:`.postgres`, for fleets), one interface (:class:`.base.EmbeddingStore`).

The store is what a :class:`~zstagger.Tagger` gets as its image cache when
``ZSTAGGER_STORE`` is set: images whose bytes were embedded before by the same model are
neither decoded nor encoded, and every image tagged is recorded, wherever a Tagger runs
(CLI, Python, queue workers, HTTP service). That is why this package sits below the
tagger, beside :mod:`zstagger.embedding_cache`, and imports nothing above it; what reads
the store to re-tag, diff and search (:mod:`zstagger.catalogue`) sits above the tagger.
"""

from __future__ import annotations

import os
import re

from ..errors import ConfigurationError, MissingExtraError, StoreError, StoreUnavailableError
from ..settings import redact_url
from .base import (EmbeddingStore, Erasure, StoredBatch, StoredImage, StoredModel, Transaction, reference_from_store,
                   stored_reference)

__all__ = ["EmbeddingStore", "Erasure", "StoreError", "StoreUnavailableError", "StoredBatch", "StoredImage", "StoredModel",
           "Transaction", "open_store", "reference_from_store", "stored_reference"]


_SCHEME_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def open_store(url: str, *, timeout: float = 20.0, connections: int = 4, create: bool = True) -> EmbeddingStore:
    """The store at ``url``; nothing is connected until first use.

    - ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` (SQLAlchemy's form),
      or a plain file path: one SQLite file, created with its schema on first use
      (``create=False``: a file that does not exist is an error instead);
    - ``postgresql://user:password@host:port/db?sslmode=...`` (or ``postgres://``): a
      PostgreSQL server, ``connections`` pooled per process; its schema is created by
      ``zstagger store init``. Needs the ``store`` extra (psycopg).
    """
    url = (url or "").strip()
    if not url:
        raise ConfigurationError("no embedding store given: set ZSTAGGER_STORE (sqlite:///path or postgresql://...) "
                                 "or pass --store")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("postgresql", "postgres"):
        try:
            import psycopg  # noqa: F401
            import psycopg_pool  # noqa: F401
        except ImportError:
            raise MissingExtraError('psycopg is not installed; a PostgreSQL embedding store needs the store extra: '
                                    'pip install "zstagger[store]"') from None
        from .postgres import PostgresStore

        return PostgresStore(url, timeout=timeout, connections=connections)
    if scheme == "sqlite" or not scheme:
        path = url[len("sqlite:///"):] if scheme else url
        if scheme and (not url.startswith("sqlite:///") or not path or "?" in path):
            raise ConfigurationError(f"ZSTAGGER_STORE={redact_url(url)}: an SQLite store is sqlite:///relative/path.db or "
                                     "sqlite:////absolute/path.db (in-memory stores are not supported)")
        if not scheme and (_SCHEME_LIKE.match(url) or url.lower().startswith("sqlite")):
            raise ConfigurationError(f"ZSTAGGER_STORE={redact_url(url)} is neither a store URL nor a plain file path: an "
                                     "SQLite store is sqlite:///relative/path.db or sqlite:////absolute/path.db")
        path = os.path.expanduser(path)
        if os.path.isdir(path):
            raise ConfigurationError(f"the embedding store {path} is a directory: give the path of a file in it, "
                                     f"e.g. {os.path.join(path, 'store.db')}")
        parent = os.path.dirname(os.path.abspath(path))
        if create and not os.path.exists(parent):  # a typo in the path would otherwise start a second, empty store
            raise ConfigurationError(f"no directory {parent} for the embedding store {path}: create it (mkdir -p) or "
                                     "correct the path")
        if not create and not os.path.isfile(path):
            raise StoreError(f"no embedding store at {path}: nothing has been recorded there yet (tag with ZSTAGGER_STORE "
                             "set to it), or the path is wrong")
        from .sqlite import SQLiteStore

        return SQLiteStore(url, path, timeout=timeout)
    raise ConfigurationError(f"ZSTAGGER_STORE={redact_url(url)}: unsupported scheme {scheme!r}; use sqlite:///path "
                             "or postgresql://user:password@host/db")
