"""The review queue: results chosen for people (:mod:`.strata`), claimed one at a time, decided, undone.

Backed by the embedding store's database (:func:`zstagger.store.open_store`: SQLite or
PostgreSQL), in its own tables (:mod:`.schema`), created on first use. Every operation is
one transaction:

- :meth:`ReviewQueue.enqueue`: result lines in, the chosen ones stored as items (again:
  nothing new, the choice is fixed by a hash);
- :meth:`ReviewQueue.claim`: the next pending item nobody holds, claimed for ``lease``
  seconds. Two reviewers never get the same item: SQLite takes the write lock for the
  whole claim; PostgreSQL locks the row it picks and skips rows others have locked
  (``FOR UPDATE SKIP LOCKED``). A claim that expires frees the item for others;
- :meth:`ReviewQueue.decide`: accept (the model's tags are right), reject (the label in
  question is wrong: it is taken off the tags, or put on if it had not fired) or relabel
  (these labels are true); only by the reviewer holding the claim, once;
- :meth:`ReviewQueue.undo`: take back a reviewer's last decision; the item is theirs again;
- :meth:`ReviewQueue.stats` and :meth:`ReviewQueue.export` (the manifest ``eval`` and
  ``calibrate`` read, weighted by 1 / inclusion probability).

Reviewer input is untrusted: names and labels are bounded, labels must be the item's own.
No HTTP here (the service's review routes call this).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ZstaggerError
from ..store import EmbeddingStore
from .schema import REVIEW_SCHEMA_VERSION, VERSION_TABLE, migrations
from .strata import Selection, choose, uniform

ACTIONS = ("accept", "reject", "relabel")
DEFAULT_LEASE = 300.0
MAX_NAME = 200
MAX_LABELS = 100
_ITEM_COLUMNS = ("id, taxonomy, taxonomy_version, job_id, reference, label, score, verdict, tags, choices, result, stratum, "
                 "probability, status, claimed_by, claim_expires, skips, created")


class ReviewError(ZstaggerError):
    """A review operation that cannot be done (item not claimed by this reviewer, decided already, bad label...).
    ``kind`` says which; the HTTP API answers each kind with its own status (zstagger.service.review)."""

    type = "review_refused"

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class ReviewItem:
    id: int
    taxonomy: str
    taxonomy_version: str
    job_id: str
    reference: str
    label: str
    score: float
    verdict: str | None
    tags: list[str]
    choices: list[str]
    result: dict
    stratum: str
    probability: float
    status: str
    claimed_by: str | None
    claim_expires: float | None
    skips: int
    created: float

    @classmethod
    def from_row(cls, row: tuple) -> ReviewItem:
        values = list(row)
        values[0] = int(row[0])
        values[8], values[9], values[10] = json.loads(row[8]), json.loads(row[9]), json.loads(row[10])
        values[6], values[12] = float(row[6]), float(row[12])
        return cls(*values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Decision:
    id: int
    item_id: int
    reviewer: str
    action: str
    labels: list[str]
    decided: float
    undone: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ReviewQueue:
    """The review queue in ``store``'s database (see the module docstring)."""

    def __init__(self, store: EmbeddingStore):
        self.store = store
        self._ready = False

    # -- schema -----------------------------------------------------------------------

    def migrate(self) -> tuple[int, int]:
        """Create or upgrade the review tables; returns (version before, version now)."""
        store = self.store

        def apply(tx) -> tuple[int, int]:
            tx.lock_schema()
            tx.execute(VERSION_TABLE[store.dialect])
            before = int(tx.execute("SELECT coalesce(max(version), 0) FROM zstagger_review_schema").fetchone()[0])
            if before > REVIEW_SCHEMA_VERSION:
                raise ReviewError("schema", f"the review tables at {store.where} are version {before}, newer than this "
                                  f"zstagger understands ({REVIEW_SCHEMA_VERSION}): upgrade zstagger")
            for version, statements in enumerate(migrations(store.dialect), start=1):
                if version > before:
                    for statement in statements:
                        tx.execute(statement)
                    tx.execute("INSERT INTO zstagger_review_schema (version, applied) VALUES (?, ?)",
                                   [version, time.time()])
            return before, REVIEW_SCHEMA_VERSION

        result = store.transaction(apply, write=True)
        self._ready = True
        return result

    def _run(self, call, write: bool = False):
        """``call(tx)`` in one store transaction (:meth:`~zstagger.store.EmbeddingStore.transaction`). A
        ReviewError is raised before anything is written, and is passed out as it is (the store
        would wrap it as one of its own errors)."""
        if not self._ready:
            self.migrate()

        def guarded(tx):
            try:
                return call(tx)
            except ReviewError as exc:
                return exc

        result = self.store.transaction(guarded, write=write)
        if isinstance(result, ReviewError):
            raise result
        return result

    # -- filling ----------------------------------------------------------------------

    def enqueue(self, lines: Iterable[str | dict], selection: Selection, job_id: str = "",
                batch: int = 1000) -> dict[str, int]:
        """Choose among result lines (JSON text or dicts, as ``zstagger tag`` writes them) and store
        the chosen ones; returns counts: ``seen``, ``band``, ``blocked``, ``audit``, ``added`` (new), ``errors`` (skipped)."""
        counts = {"seen": 0, "band": 0, "blocked": 0, "audit": 0, "added": 0, "errors": 0}
        rows: list[list[Any]] = []
        for line in lines:
            result = json.loads(line) if isinstance(line, (str, bytes)) else line
            counts["seen"] += 1
            if result.get("error") is not None or not result.get("scores"):
                counts["errors"] += 1
                continue
            scores = {entry["label"]: float(entry["score"]) for entry in result["scores"]}
            picked = choose(scores, list(result.get("tags") or []), selection, job_id, result["image"])
            if picked is None:
                continue
            stratum, probability, label = picked
            counts[stratum] += 1
            version = (result.get("provenance") or {}).get("taxonomy_version", "")
            rows.append([result["taxonomy"], version, job_id, result["image"], label, scores[label], result.get("verdict"),
                         json.dumps(result.get("tags") or []), json.dumps(list(scores)), json.dumps(result), stratum,
                         probability, uniform(selection.seed + "/rank", job_id, result["image"]), time.time()])
            if len(rows) >= batch:
                counts["added"] += self._insert(rows)
                rows = []
        if rows:
            counts["added"] += self._insert(rows)
        return counts

    def _insert(self, rows: list[list[Any]]) -> int:
        def write(tx) -> int:
            before = int(tx.execute("SELECT count(*) FROM zstagger_review_items").fetchone()[0])
            for row in rows:
                tx.execute("INSERT INTO zstagger_review_items (taxonomy, taxonomy_version, job_id, reference, label, "
                               "score, verdict, tags, choices, result, stratum, probability, rank, created) VALUES "
                               "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (taxonomy, job_id, reference) DO NOTHING",
                               row)
            return int(tx.execute("SELECT count(*) FROM zstagger_review_items").fetchone()[0]) - before

        return self._run(write, write=True)

    # -- reviewing --------------------------------------------------------------------

    def claim(self, reviewer: str, lease: float = DEFAULT_LEASE, taxonomy: str | None = None) -> ReviewItem | None:
        """The next pending item nobody holds, now held by ``reviewer`` for ``lease`` seconds; None when none is left."""
        reviewer = _name(reviewer)
        store = self.store
        now = time.time()
        scope, params = ("AND taxonomy = ?", [taxonomy]) if taxonomy else ("", [])
        lock = " FOR UPDATE SKIP LOCKED" if store.dialect == "postgresql" else ""
        sql = (f"UPDATE zstagger_review_items SET claimed_by = ?, claim_expires = ? WHERE id = ("
               f"SELECT id FROM zstagger_review_items WHERE status = 'pending' AND (claim_expires IS NULL OR claim_expires < ?) "
               f"{scope} ORDER BY skips, rank, id LIMIT 1{lock}) RETURNING {_ITEM_COLUMNS}")

        def write(tx) -> ReviewItem | None:
            row = tx.execute(sql, [reviewer, now + lease, now, *params]).fetchone()
            return ReviewItem.from_row(row) if row is not None else None

        return self._run(write, write=True)

    def item(self, item_id: int) -> ReviewItem:
        def read(tx):
            return tx.execute(f"SELECT {_ITEM_COLUMNS} FROM zstagger_review_items WHERE id = ?", [int(item_id)]).fetchone()

        row = self._run(read)
        if row is None:
            raise ReviewError("not_found", f"no review item {item_id}")
        return ReviewItem.from_row(row)

    def skip(self, item_id: int, reviewer: str) -> None:
        """Give a held item back (it goes behind the items not skipped yet)."""
        reviewer = _name(reviewer)

        def write(tx) -> None:
            self._held(tx, item_id, reviewer)
            tx.execute("UPDATE zstagger_review_items SET claimed_by = NULL, claim_expires = NULL, skips = skips + 1 "
                           "WHERE id = ?", [int(item_id)])

        self._run(write, write=True)

    def decide(self, item_id: int, reviewer: str, action: str, labels: list[str] | None = None) -> Decision:
        """Record ``reviewer``'s decision on an item they hold (see the module docstring for the actions)."""
        reviewer = _name(reviewer)
        if action not in ACTIONS:
            raise ReviewError("invalid_decision", f"decision must be one of {', '.join(ACTIONS)}, not {str(action)[:40]!r}")

        def write(tx) -> Decision:
            item = self._held(tx, item_id, reviewer)
            truth = _truth(item, action, labels)
            now = time.time()
            tx.execute("UPDATE zstagger_review_items SET status = 'decided', claimed_by = NULL, claim_expires = NULL "
                           "WHERE id = ?", [item.id])
            row = tx.execute("INSERT INTO zstagger_review_decisions (item_id, reviewer, action, labels, decided) "
                                 "VALUES (?, ?, ?, ?, ?) RETURNING id", [item.id, reviewer, action, json.dumps(truth), now]).fetchone()
            return Decision(int(row[0]), item.id, reviewer, action, truth, now)

        return self._run(write, write=True)

    def undo(self, reviewer: str, lease: float = DEFAULT_LEASE) -> tuple[Decision, ReviewItem]:
        """Take back ``reviewer``'s latest decision still standing; the item is pending again, held by them."""
        reviewer = _name(reviewer)

        def write(tx) -> tuple[Decision, ReviewItem]:
            row = tx.execute("SELECT id, item_id, reviewer, action, labels, decided FROM zstagger_review_decisions "
                                 "WHERE reviewer = ? AND undone IS NULL ORDER BY decided DESC, id DESC LIMIT 1",
                                 [reviewer]).fetchone()
            if row is None:
                raise ReviewError("nothing_to_undo", f"{reviewer} has no decision to undo")
            now = time.time()
            tx.execute("UPDATE zstagger_review_decisions SET undone = ? WHERE id = ?", [now, int(row[0])])
            item_row = tx.execute(f"UPDATE zstagger_review_items SET status = 'pending', claimed_by = ?, "
                                      f"claim_expires = ? WHERE id = ? RETURNING {_ITEM_COLUMNS}",
                                      [reviewer, now + lease, int(row[1])]).fetchone()
            decision = Decision(int(row[0]), int(row[1]), row[2], row[3], json.loads(row[4]), float(row[5]), now)
            return decision, ReviewItem.from_row(item_row)

        return self._run(write, write=True)

    def _held(self, tx, item_id: int, reviewer: str) -> ReviewItem:
        """The item, if it is pending and held by ``reviewer`` (their claim may have run out if nobody took it since)."""
        row = tx.execute(f"SELECT {_ITEM_COLUMNS} FROM zstagger_review_items WHERE id = ?", [int(item_id)]).fetchone()
        if row is None:
            raise ReviewError("not_found", f"no review item {item_id}")
        item = ReviewItem.from_row(row)
        if item.status != "pending":
            raise ReviewError("already_decided", f"review item {item_id} is decided already (undo it first)")
        if item.claimed_by != reviewer:
            raise ReviewError("not_claimed", f"review item {item_id} is not held by {reviewer}: claim it with next first"
                              + (" (someone else holds it)" if item.claimed_by else ""))
        return item

    # -- reading ----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Pending and decided items per stratum, agreement with the model, and each reviewer's decisions and pace."""

        def read(tx) -> dict[str, Any]:
            now = time.time()
            strata = {}
            for stratum, status, count in tx.execute(
                    "SELECT stratum, status, count(*) FROM zstagger_review_items GROUP BY stratum, status").fetchall():
                strata.setdefault(stratum, {"pending": 0, "decided": 0})[status] = int(count)
            claimed = int(tx.execute("SELECT count(*) FROM zstagger_review_items WHERE status = 'pending' AND "
                                         "claim_expires >= ?", [now]).fetchone()[0])
            actions = {a: int(n) for a, n in tx.execute(
                "SELECT action, count(*) FROM zstagger_review_decisions WHERE undone IS NULL GROUP BY action").fetchall()}
            reviewers = {}
            for name, count, first, last in tx.execute(
                    "SELECT reviewer, count(*), min(decided), max(decided) FROM zstagger_review_decisions "
                    "WHERE undone IS NULL GROUP BY reviewer").fetchall():
                span = float(last) - float(first)
                reviewers[name] = {"decisions": int(count),
                                   "per_hour": round(3600 * (int(count) - 1) / span, 1) if span > 0 else None}
            decided = sum(actions.values())
            return {
                "pending": sum(s["pending"] for s in strata.values()), "decided": decided, "claimed": claimed,
                "strata": strata, "actions": actions,
                "agreement": round(actions.get("accept", 0) / decided, 4) if decided else None,
                "reviewers": reviewers,
            }

        return self._run(read)

    def export(self) -> Iterator[dict[str, Any]]:
        """One manifest row per decided item (its standing decision): ``image``, ``labels``, ``weight`` =
        1 / inclusion probability, and where it came from (taxonomy, stratum, reviewer, decided)."""

        def read(tx):
            return tx.execute("SELECT i.reference, d.labels, i.probability, i.taxonomy, i.taxonomy_version, i.stratum, "
                                  "i.label, i.score, d.action, d.reviewer, d.decided FROM zstagger_review_items i JOIN "
                                  "zstagger_review_decisions d ON d.item_id = i.id WHERE d.undone IS NULL AND i.status = 'decided' "
                                  "ORDER BY i.id").fetchall()

        for reference, labels, probability, taxonomy, version, stratum, label, score, action, reviewer, decided in self._run(read):
            yield {"image": reference, "labels": json.loads(labels), "weight": 1.0 / float(probability),
                   "taxonomy": taxonomy, "taxonomy_version": version, "stratum": stratum, "label": label,
                   "score": float(score), "decision": action, "reviewer": reviewer, "decided": float(decided)}


def _name(reviewer: str) -> str:
    reviewer = (reviewer or "").strip()
    if not reviewer or len(reviewer) > MAX_NAME:
        raise ReviewError("invalid_reviewer", f"a reviewer's name is 1 to {MAX_NAME} characters")
    return reviewer


def _truth(item: ReviewItem, action: str, labels: list[str] | None) -> list[str]:
    """The labels a decision says are true of the image."""
    if action == "accept":
        return list(item.tags)
    if action == "reject":
        return [t for t in item.tags if t != item.label] if item.label in item.tags else [*item.tags, item.label]
    if labels is None or not isinstance(labels, list) or len(labels) > MAX_LABELS:
        raise ReviewError("invalid_decision", f"relabel needs the true labels: a list of at most {MAX_LABELS} of the item's labels")
    unknown = [str(label)[:80] for label in labels if label not in item.choices]
    if unknown:
        raise ReviewError("invalid_decision", f"not labels of taxonomy {item.taxonomy!r}: {', '.join(map(repr, unknown[:5]))}")
    return list(dict.fromkeys(labels))
