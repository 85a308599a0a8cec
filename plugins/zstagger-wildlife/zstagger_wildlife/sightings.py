"""A sightings log as a result sink: ``--sink sightings://NAME``.

Each finished chunk's results become rows of ``NAME.sqlite`` in ``WILDLIFE_SIGHTINGS``:
one per image (job, index, image, species, score), keyed by job and index, so a chunk the
queue delivers again replaces its rows instead of adding them twice.
"""

from __future__ import annotations

import json
import os
import sqlite3

from zstagger import hookimpl


class SightingsSink:
    schemes = ("sightings",)

    def path(self, url: str) -> str:
        name = url[len("sightings://"):].strip("/")
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"{url}: give a log name, sightings://NAME")
        return os.path.join(os.environ.get("WILDLIFE_SIGHTINGS", "."), f"{name}.sqlite")

    def write(self, url: str, job_id: str, chunk: str, lines) -> None:
        rows = []
        for line in lines:
            result = json.loads(line)
            best = result["scores"][0] if result.get("scores") else {"label": None, "score": None}
            rows.append((job_id, result["index"], result["image"], best["label"], best["score"]))
        with sqlite3.connect(self.path(url)) as db:
            db.execute("CREATE TABLE IF NOT EXISTS sightings (job TEXT, idx INTEGER, image TEXT, species TEXT, "
                       "score REAL, PRIMARY KEY (job, idx))")
            db.executemany("INSERT OR REPLACE INTO sightings VALUES (?, ?, ?, ?, ?)", rows)


@hookimpl
def register_result_sinks(register):
    register(SightingsSink())
