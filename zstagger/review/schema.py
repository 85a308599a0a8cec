"""The review queue's tables, beside the embedding store's in the same database (SQLite or PostgreSQL).

- ``zstagger_review_schema``: the versions applied (its own, so the store's schema and this
  one change independently).
- ``zstagger_review_items``: one row per result chosen for review: taxonomy (and version),
  job, reference, the label in question and its score, the model's verdict and tags, the
  result line itself (with its decision trail), the stratum and inclusion probability, a
  random rank (the order people see items in), its status and the current claim (who,
  until when). Unique per (taxonomy, job, reference).
- ``zstagger_review_decisions``: every decision: item, reviewer (the API key's name), action
  (accept, reject, relabel), the labels it says are true, when; ``undone`` when it was taken back.

Times are Unix seconds. Each version is a list of statements; a new version appends one.
"""

from __future__ import annotations

REVIEW_SCHEMA_VERSION = 1

_COMMON_ITEMS = (
    " taxonomy {text} NOT NULL, taxonomy_version {text} NOT NULL, job_id {text} NOT NULL DEFAULT '',"
    " reference {text} NOT NULL, label {text} NOT NULL, score {real} NOT NULL, verdict {text}, tags {text} NOT NULL,"
    " choices {text} NOT NULL, result {text} NOT NULL, stratum {text} NOT NULL, probability {real} NOT NULL,"
    " rank {real} NOT NULL, status {text} NOT NULL DEFAULT 'pending', claimed_by {text}, claim_expires {real},"
    " skips integer NOT NULL DEFAULT 0, created {real} NOT NULL, UNIQUE (taxonomy, job_id, reference))"
)
_COMMON_DECISIONS = (
    " item_id {int} NOT NULL REFERENCES zstagger_review_items (id), reviewer {text} NOT NULL, action {text} NOT NULL,"
    " labels {text} NOT NULL, decided {real} NOT NULL, undone {real})"
)


def _statements(text: str, real: str, integer: str, item_key: str, decision_key: str) -> list[str]:
    kinds = {"text": text, "real": real, "int": integer}
    return [
        f"CREATE TABLE zstagger_review_items (id {item_key}," + _COMMON_ITEMS.format(**kinds),
        f"CREATE TABLE zstagger_review_decisions (id {decision_key}," + _COMMON_DECISIONS.format(**kinds),
        "CREATE INDEX zstagger_review_items_next ON zstagger_review_items (status, skips, rank)",
        "CREATE INDEX zstagger_review_decisions_item ON zstagger_review_decisions (item_id)",
        "CREATE INDEX zstagger_review_decisions_reviewer ON zstagger_review_decisions (reviewer, decided)",
    ]


_MIGRATIONS = {
    "sqlite": [_statements("TEXT", "REAL", "INTEGER", "INTEGER PRIMARY KEY", "INTEGER PRIMARY KEY")],
    "postgresql": [_statements("text", "double precision", "bigint", "bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
                               "bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY")],
}

VERSION_TABLE = {
    "sqlite": "CREATE TABLE IF NOT EXISTS zstagger_review_schema (version INTEGER PRIMARY KEY, applied REAL NOT NULL)",
    "postgresql": ("CREATE TABLE IF NOT EXISTS zstagger_review_schema (version integer PRIMARY KEY,"
                   " applied double precision NOT NULL)"),
}


def migrations(dialect: str) -> list[list[str]]:
    """Statements per version, version 1 first."""
    steps = _MIGRATIONS[dialect]
    assert len(steps) == REVIEW_SCHEMA_VERSION
    return steps
