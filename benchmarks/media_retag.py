"""Re-judging stored videos: ``zstagger retag`` and ``zstagger diff`` over videos kept in the
embedding store, against the same number of stored stills. No video is read: the stored
references name files that do not exist.

    python benchmarks/media_retag.py --model CKPT/vitb32 [--videos 1000] [--frames 61]

Fills a fresh SQLite store with ``--videos`` synthetic video records (``--frames`` sampled
frames each, one a second, a fifth of them near-duplicates sharing the embedding before them;
random unit fp16 vectors of the model's size, under the model's fingerprint) and as many
stills, then times, in one run: ``zstagger retag -t moderation`` over the videos and over the
stills, and ``zstagger diff`` over the videos (text embeddings cached first, as after any
earlier run: the model is not loaded). Prints one JSON object with the load average.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import clean_env, emit, options

from zstagger.embedding_cache import EmbeddingKey, ImageSighting
from zstagger.engine.locate import model_fingerprint
from zstagger.media import MediaRecord
from zstagger.store import open_store


def unit(rng, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def fill(url: str, fingerprint: str, dim: int, videos: int, frames: int, kind: str) -> None:
    rng = np.random.default_rng(0 if kind == "video" else 1)
    store = open_store(url)
    for start in range(0, videos, 100):
        batch = []
        for i in range(start, min(videos, start + 100)):
            key = EmbeddingKey(hashlib.sha256(f"{kind}{i}".encode()).hexdigest(), fingerprint, "fast")
            if kind == "video":
                repeats = rng.random(frames) < 0.2
                repeats[0] = False
                rows = np.cumsum(~repeats) - 1
                record = MediaRecord("video", "bench", np.arange(frames, dtype=np.float64), np.arange(frames) * 30, rows,
                                     unit(rng, int(rows[-1]) + 1, dim).astype("<f2"), float(frames), frames * 30, False, True)
                batch.append(ImageSighting(key, f"/videos/{i:05d}.mp4", "", None, record))
            else:
                batch.append(ImageSighting(key, f"/stills/{i:05d}.jpg", "", unit(rng, 1, dim)[0]))
        assert store.record(batch, "bench") == 0
    store.close()


def timed(cmd: list[str], env: dict, out: Path) -> float:
    started = time.perf_counter()
    with open(out, "w") as sink:
        done = subprocess.run(cmd, env=env, stdout=sink, stderr=subprocess.PIPE, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr}")
    return time.perf_counter() - started


def main() -> None:
    parser = options(__doc__)
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=61)
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="zstagger-media-retag-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = clean_env(ZSTAGGER_MODEL=args.model, ZSTAGGER_CACHE_DIR=str(workdir / "cache"))
    fingerprint = model_fingerprint(args.model)
    dim = json.loads((Path(args.model) / "config.json").read_text()).get("projection_dim", 512)
    report: dict = {"videos": args.videos, "frames_per_video": args.frames, "model": args.model, "dim": dim}
    try:
        urls = {kind: f"sqlite:///{workdir}/{kind}.sqlite3" for kind in ("video", "still")}
        for kind, url in urls.items():
            fill(url, fingerprint, dim, args.videos, args.frames, kind)
        cli = [sys.executable, "-m", "zstagger.cli"]
        timed([*cli, "retag", "-t", "moderation", "--since", "2999-01-01", "--store", urls["still"]], env, workdir / "warm")
        report["load_before"] = round(os.getloadavg()[0], 2)
        seconds = {}
        for kind, url in urls.items():
            out = workdir / f"retag-{kind}.jsonl"
            seconds[kind] = timed([*cli, "retag", "-t", "moderation", "--store", url, "--no-progress"], env, out)
            lines = [json.loads(line) for line in out.read_text().splitlines()]
            assert len(lines) == args.videos and all(line["error"] is None for line in lines), lines[:1]
            if kind == "video":
                assert all(line["media"]["frames_scored"] == args.frames for line in lines)
        diff = timed([*cli, "diff", "--old", "moderation", "--new", "moderation", "--store", urls["video"], "--json",
                      "--no-progress"], env, workdir / "diff.json")
        report.update(
            retag_videos_seconds=round(seconds["video"], 2), retag_stills_seconds=round(seconds["still"], 2),
            retag_videos_per_s=round(args.videos / seconds["video"], 1),
            retag_frames_per_s=round(args.videos * args.frames / seconds["video"]),
            video_vs_still_per_item=round(seconds["video"] / seconds["still"], 2),
            diff_videos_seconds=round(diff, 2), videos_read=0,
        )
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    emit(report)


if __name__ == "__main__":
    main()
