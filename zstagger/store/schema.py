"""The embedding store's schema: one set of tables, written for SQLite and for PostgreSQL.

- ``zstagger_schema``: the versions applied (``zstagger store init`` applies what is missing).
- ``zstagger_models``: one row per (model fingerprint, preprocessing mode) with the model's
  name and embedding size; the other tables refer to it by a small integer.
- ``zstagger_embeddings``: one fp16 embedding per (model, SHA-256 of the image bytes). A
  re-upload of the same bytes shares it.
- ``zstagger_images``: one row per image seen: its reference (as results name it), content
  hash, job id (``''`` outside a queued job) and when it was last seen. Unique per (model,
  job, reference), so recording a chunk again (a redelivery) rewrites the same rows.
- ``zstagger_media`` (version 2): per (model, SHA-256 of an animation's or video's bytes),
  the frames judged (:class:`~zstagger.media.MediaRecord`): their times, frame numbers and
  embedding rows, the distinct fp16 embeddings, what decoding found, whether every frame was
  judged, and the sampling settings. Its images are rows of ``zstagger_images`` like any other.

Times are Unix seconds (``double precision``) in both backends, so every query is the same.
Each version is a list of statements; a new version appends a list, never edits an old one.
"""

from __future__ import annotations

SCHEMA_VERSION = 2

_SQLITE = [
    [
        ("CREATE TABLE zstagger_models (id INTEGER PRIMARY KEY, fingerprint TEXT NOT NULL, mode TEXT NOT NULL,"
         " name TEXT NOT NULL, dim INTEGER NOT NULL, created REAL NOT NULL, UNIQUE (fingerprint, mode))"),
        ("CREATE TABLE zstagger_embeddings (model_id INTEGER NOT NULL, sha256 BLOB NOT NULL, vector BLOB NOT NULL,"
         " created REAL NOT NULL, PRIMARY KEY (model_id, sha256))"),
        ("CREATE TABLE zstagger_images (id INTEGER PRIMARY KEY, model_id INTEGER NOT NULL, sha256 BLOB NOT NULL,"
         " reference TEXT NOT NULL, job_id TEXT NOT NULL DEFAULT '', seen REAL NOT NULL)"),
        "CREATE UNIQUE INDEX zstagger_images_key ON zstagger_images (model_id, job_id, reference)",
        "CREATE INDEX zstagger_images_seen ON zstagger_images (seen)",
        "CREATE INDEX zstagger_images_sha256 ON zstagger_images (sha256)",
        "CREATE INDEX zstagger_images_reference ON zstagger_images (reference)",
    ],
    [
        ("CREATE TABLE zstagger_media (model_id INTEGER NOT NULL, sha256 BLOB NOT NULL, kind TEXT NOT NULL,"
         " sampling TEXT NOT NULL, times BLOB NOT NULL, frame_numbers BLOB NOT NULL, frame_rows BLOB NOT NULL,"
         " vectors BLOB NOT NULL, dim INTEGER NOT NULL, duration REAL, frames_decoded INTEGER NOT NULL, truncated INTEGER NOT NULL,"
         " complete INTEGER NOT NULL, created REAL NOT NULL, PRIMARY KEY (model_id, sha256))"),
    ],
]

_POSTGRES = [
    [
        ("CREATE TABLE zstagger_models (id serial PRIMARY KEY, fingerprint text NOT NULL, mode text NOT NULL,"
         " name text NOT NULL, dim integer NOT NULL, created double precision NOT NULL, UNIQUE (fingerprint, mode))"),
        ("CREATE TABLE zstagger_embeddings (model_id integer NOT NULL, sha256 bytea NOT NULL, vector bytea NOT NULL,"
         " created double precision NOT NULL, PRIMARY KEY (model_id, sha256))"),
        # fp16 vectors do not compress: store them as they are, without trying
        "ALTER TABLE zstagger_embeddings ALTER COLUMN vector SET STORAGE EXTERNAL",
        ("CREATE TABLE zstagger_images (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, model_id integer NOT NULL,"
         " sha256 bytea NOT NULL, reference text NOT NULL, job_id text NOT NULL DEFAULT '', seen double precision NOT NULL)"),
        "CREATE UNIQUE INDEX zstagger_images_key ON zstagger_images (model_id, job_id, reference)",
        "CREATE INDEX zstagger_images_seen ON zstagger_images (seen)",
        "CREATE INDEX zstagger_images_sha256 ON zstagger_images (sha256)",
        "CREATE INDEX zstagger_images_reference ON zstagger_images (reference)",
    ],
    [
        ("CREATE TABLE zstagger_media (model_id integer NOT NULL, sha256 bytea NOT NULL, kind text NOT NULL,"
         " sampling text NOT NULL, times bytea NOT NULL, frame_numbers bytea NOT NULL, frame_rows bytea NOT NULL,"
         " vectors bytea NOT NULL, dim integer NOT NULL, duration double precision, frames_decoded integer NOT NULL, truncated integer NOT NULL,"
         " complete integer NOT NULL, created double precision NOT NULL, PRIMARY KEY (model_id, sha256))"),
        "ALTER TABLE zstagger_media ALTER COLUMN vectors SET STORAGE EXTERNAL",
    ],
]

VERSION_TABLE = {
    "sqlite": "CREATE TABLE IF NOT EXISTS zstagger_schema (version INTEGER PRIMARY KEY, applied REAL NOT NULL)",
    "postgresql": "CREATE TABLE IF NOT EXISTS zstagger_schema (version integer PRIMARY KEY, applied double precision NOT NULL)",
}

TABLES = ("zstagger_images", "zstagger_embeddings", "zstagger_media", "zstagger_models", "zstagger_schema")


def migrations(dialect: str) -> list[list[str]]:
    """Statements per version, version 1 first."""
    steps = {"sqlite": _SQLITE, "postgresql": _POSTGRES}[dialect]
    assert len(steps) == SCHEMA_VERSION
    return steps
