"""Re-tagging a million stored embeddings, on SQLite and on PostgreSQL, and what the store costs.

    python benchmarks/store_retag.py --model CKPT/vitb32 [--rows 1000000] [--backends sqlite,postgresql]

For each backend, in one run:

- fills a fresh store with ``--rows`` synthetic images (random unit fp16 vectors of the
  model's size, recorded under the model's fingerprint, 1% of them re-uploads of another
  image's bytes) by bulk load, and reports bytes per image on disk;
- ``record`` rate: images per second through the tagger's write path (chunks of 32, one
  write each, half new embeddings and half re-sightings), on a second, fresh store;
- ``zstagger retag -t moderation > file``: wall time and images/s (text embeddings cached
  first, as after any earlier run: the model is not loaded);
- ``zstagger diff --old moderation --new <moderation with two thresholds lowered to 0.2> --json``.

PostgreSQL runs with its default durability (fsync, synchronous commit) in a throwaway
cluster on a loopback port (Debian's packages; run as ``nobody`` when root). Prints one
JSON object; the machine's load average is in it, since every figure shares the cores, and
so is the CPU time each command used (its own and its worker processes'; PostgreSQL's
server processes not included).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import clean_env, emit, options, servers

from zstagger.embedding_cache import EmbeddingKey, ImageSighting
from zstagger.engine.locate import model_fingerprint
from zstagger.store import open_store


def synthetic(n: int, dim: int, start: int, seed: int) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    digests = [hashlib.sha256((start + i).to_bytes(8, "little")).digest() for i in range(n)]
    seen = time.time() - 90 * 86400 * rng.random(n)
    return digests, v.astype("<f2"), seen


def fill(store, rows: int, fingerprint: str, name: str, dim: int) -> float:
    """Bulk-load ``rows`` images (1% re-uploads: a second reference to an existing embedding)."""
    with store._session(True) as conn:
        model_id = store._model_id(conn, fingerprint, "fast", name=name, dim=dim)
    started = time.perf_counter()
    step = 50_000
    for start in range(0, rows, step):
        n = min(step, rows - start)
        digests, vectors, seen = synthetic(n, dim, start, start)
        images = [(d, f"/catalogue/{(start + i) // 1000:04d}/{start + i:07d}.jpg", float(seen[i])) for i, d in enumerate(digests)]
        keep = n - n // 100  # so that the store holds exactly ``rows`` images, ``keep`` distinct ones
        uploads = [(digests[k * 99], f"/uploads/again-{start + k:07d}.jpg", float(seen[k])) for k in range(n // 100)]
        embeddings = [(d, vectors[i].tobytes(), float(seen[i])) for i, d in enumerate(digests[:keep])]
        images = images[:keep] + uploads
        if store.dialect == "sqlite":
            with store._session(True) as conn:
                conn.executemany("INSERT INTO zstagger_embeddings (model_id, sha256, vector, created) VALUES (?, ?, ?, ?)",
                                 [(model_id, *e) for e in embeddings])
                conn.executemany("INSERT INTO zstagger_images (model_id, sha256, reference, job_id, seen) VALUES (?, ?, ?, '', ?)",
                                 [(model_id, *i) for i in images])
        else:
            with store._session(True) as conn, conn.cursor() as cur:
                with cur.copy("COPY zstagger_embeddings (model_id, sha256, vector, created) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["int4", "bytea", "bytea", "float8"])
                    for e in embeddings:
                        copy.write_row((model_id, *e))
                with cur.copy("COPY zstagger_images (model_id, sha256, reference, job_id, seen) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["int4", "bytea", "text", "text", "float8"])
                    for i in images:
                        copy.write_row((model_id, i[0], i[1], "", i[2]))
    if store.dialect == "postgresql":
        with store._session(False) as conn:
            conn.execute("VACUUM ANALYZE zstagger_images")
            conn.execute("VACUUM ANALYZE zstagger_embeddings")
    return time.perf_counter() - started


def record_rate(store, fingerprint: str, dim: int, chunks: int = 1000, chunk: int = 32) -> float:
    """Images/s through ``record`` (the tagger's write path), half new images, half seen before."""
    digests, vectors, _ = synthetic(chunks * chunk, dim, 10**9, 1)
    started = time.perf_counter()
    for c in range(chunks):
        batch = []
        for i in range(c * chunk, (c + 1) * chunk):
            again = i % 2 == 1 and i > chunk  # a re-upload of an image recorded in an earlier chunk
            j = i - chunk if again else i
            batch.append(ImageSighting(EmbeddingKey(digests[j].hex(), fingerprint, "fast"), f"/intake/{i:08d}.jpg",
                                       f"{c:032x}", None if again else vectors[j].astype(np.float32)))
        assert store.record(batch, "bench") == 0
    return chunks * chunk / (time.perf_counter() - started)


def run(cmd: list[str], env: dict, out: Path | None = None) -> tuple[float, float]:
    """Wall seconds, and CPU seconds of the command and its worker processes."""
    started, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out or os.devnull, "w") as sink:
        done = subprocess.run(cmd, env=env, stdout=sink, stderr=subprocess.PIPE, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - started, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def main() -> None:
    parser = options(__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--workers", type=int, default=0, help="zstagger retag --workers")
    parser.add_argument("--record-chunks", type=int, default=1000, help="chunks of 32 for the record rate")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="zstagger-store-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cache = workdir / "cache"
    env = clean_env(ZSTAGGER_MODEL=args.model, ZSTAGGER_CACHE_DIR=str(cache))
    fingerprint = model_fingerprint(args.model)
    dim = json.loads((Path(args.model) / "config.json").read_text()).get("projection_dim", 512)
    stricter = workdir / "moderation-stricter.json"
    spec = json.loads(subprocess.run([sys.executable, "-m", "zstagger.cli", "taxonomies", "show", "moderation", "--json"],
                                     env=env, capture_output=True, text=True, check=True).stdout)
    spec.update(name="moderation-stricter", version="2.0")
    for label in spec["labels"]:
        if label["name"] in ("firearms", "drugs"):
            label["threshold"] = 0.2  # random vectors score about 1 / (1 + rivals): low enough to flip some
    stricter.write_text(json.dumps(spec))

    report: dict = {"rows": args.rows, "model": args.model, "dim": dim, "cores": os.cpu_count()}
    postgres = None
    try:
        for backend in args.backends.split(","):
            if backend == "sqlite":
                url, second = f"sqlite:///{workdir}/store.sqlite3", f"sqlite:///{workdir}/record.sqlite3"
            else:
                postgres = servers().PostgresServer(durable=True).start()
                url = postgres.url
                second = postgres.url + "_record"
                import psycopg

                with psycopg.connect(postgres.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
                    conn.execute("CREATE DATABASE zstagger_record")
            figures: dict = {}
            store = open_store(url)
            store.migrate()
            figures["bulk_load_seconds"] = round(fill(store, args.rows, fingerprint, args.model, dim), 1)
            figures["bytes_per_image"] = round(store.size_bytes() / args.rows)
            recorder = open_store(second)
            recorder.migrate()
            figures["record_images_per_s"] = round(record_rate(recorder, fingerprint, dim, args.record_chunks))
            recorder.close()
            store.close()
            if not cache.exists():  # the text side once, as any earlier run would have left it
                run([sys.executable, "-m", "zstagger.cli", "retag", "-t", "moderation", "--since", "2999-01-01",
                     "--store", url], env)
                run([sys.executable, "-m", "zstagger.cli", "retag", "-t", "moderation-stricter", "--since", "2999-01-01",
                     "--store", url], {**env, "ZSTAGGER_TAXONOMY_PATH": str(workdir)})
            load = os.getloadavg()[0]
            out = workdir / f"retag-{backend}.jsonl"
            seconds, cpu = run([sys.executable, "-m", "zstagger.cli", "retag", "-t", "moderation", "--store", url,
                                "--no-progress", "--workers", str(args.workers)], env, out)
            with open(out) as fh:
                lines = sum(1 for _ in fh)
            assert lines == args.rows, (lines, args.rows)
            figures.update(retag_seconds=round(seconds, 1), retag_cpu_seconds=round(cpu, 1),
                           retag_images_per_s=round(args.rows / seconds),
                           retag_output_mib=round(out.stat().st_size / 2**20), load_before_retag=round(load, 2))
            out.unlink()
            load = os.getloadavg()[0]
            seconds, cpu = run([sys.executable, "-m", "zstagger.cli", "diff", "--old", "moderation", "--new", str(stricter),
                                "--store", url, "--json", "--no-progress"], env, workdir / f"diff-{backend}.json")
            figures.update(diff_seconds=round(seconds, 1), diff_cpu_seconds=round(cpu, 1), diff_images_per_s=round(args.rows / seconds),
                           load_before_diff=round(load, 2))
            diff = json.loads((workdir / f"diff-{backend}.json").read_text())
            figures["diff_changed_verdict"] = diff["changed_verdict"]
            report[backend] = figures
            print(json.dumps({backend: figures}), file=sys.stderr, flush=True)
            if postgres is not None:
                postgres.stop()
    finally:
        if postgres is not None:
            postgres.remove()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    emit(report)


if __name__ == "__main__":
    main()
