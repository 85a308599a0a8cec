"""Peak memory of `zstagger eval` on big manifests of cached images, and how it grows.

    python benchmarks/eval_memory.py --model CKPT/vitb32 --workdir /tmp/zs-evalmem --rows 100000 1000000 \
        --json > benchmarks/results/eval_memory.json

A few hundred labelled JPEGs (zstagger.synthetic: eight moderation labels and images of
none) are embedded once into a fresh image cache; then JSONL manifests of ``--rows`` rows
reference them round-robin, each row with its image's labels, so that every row of a
million-row manifest goes through the real eval path end to end (manifest checks, the
cache's digest index and lookups, scoring, metrics, bootstrap intervals) without a
million files on disk. Each `zstagger eval` runs as its own subprocess, started by a
small Python parent that reports that child's peak resident set size (ru_maxrss), so
nothing else this script does counts. ``--rounds`` repeats the largest manifest with other
bootstrap round counts: the peak must not grow with them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

LABELS = ["explicit_nudity", "graphic_violence", "firearms", "knives_as_weapons", "drugs", "hate_symbols", "alcohol", "gambling"]

# The parent of the measured command: the child's peak RSS is all RUSAGE_CHILDREN holds.
MEASURE = (
    "import json, resource, subprocess, sys, time\n"
    "start = time.perf_counter()\n"
    "done = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)\n"
    "seconds = time.perf_counter() - start\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024\n"
    "print(json.dumps({'rc': done.returncode, 'peak_rss_bytes': peak, 'seconds': seconds,\n"
    "                  'stderr': done.stderr.decode(errors='replace')[-2000:], 'stdout': done.stdout.decode(errors='replace')}))\n"
)


def measured(cmd: list[str], env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    if result["rc"] not in (0, 1):
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed ({result['rc']}):\n{result['stderr']}")
    return result


def write_manifest(path: Path, images: list[tuple[str, list[str]]], rows: int) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows):
            ref, labels = images[i % len(images)]
            fh.write(json.dumps({"image": ref, "labels": labels}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--rounds", type=int, nargs="*", default=[100, 1000, 4000],
                        help="Bootstrap rounds to run the largest manifest with.")
    parser.add_argument("--per-label", type=int, default=20)
    parser.add_argument("--none", type=int, default=40)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(args.workdir)
    data = work / "data"
    if not data.exists():
        from zstagger.synthetic import write_labelled_folders

        write_labelled_folders(data, LABELS, args.per_label, none=args.none, size=(160, 120))
    images = []
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        labels = [] if folder.name == "_none" else [folder.name]
        images += [(str(p), labels) for p in sorted(folder.glob("*.jpg"))]
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZSTAGGER_")}
    env.update(ZSTAGGER_CACHE_DIR=str(cache), ZSTAGGER_MODEL=args.model, TOKENIZERS_PARALLELISM="false")
    distinct = work / "distinct.jsonl"
    write_manifest(distinct, images, len(images))
    print(f"embedding {len(images)} distinct images into the cache...", file=sys.stderr)
    warm = measured(["zstagger", "eval", str(distinct), "-t", "moderation", "--json", "--no-progress"], env)
    results = {"model": args.model, "distinct_images": len(images), "cpu_count": os.cpu_count(), "runs": []}
    for rows in args.rows:
        manifest = work / f"rows{rows}.jsonl"
        if not manifest.exists():
            write_manifest(manifest, images, rows)
        for rounds in (args.rounds if rows == max(args.rows) else [1000]):
            print(f"eval of {rows:,} rows, {rounds} bootstrap rounds...", file=sys.stderr)
            run = measured(["zstagger", "eval", str(manifest), "-t", "moderation", "--json", "--no-progress",
                            "--bootstrap", str(rounds)], env)
            report = json.loads(run["stdout"])
            assert report["evaluated"] == rows and report["cache_misses"] == 0, (report["evaluated"], report["cache_misses"])
            results["runs"].append({"rows": rows, "bootstrap_rounds": rounds, "peak_rss_mb": round(run["peak_rss_bytes"] / 2**20),
                                    "seconds": round(run["seconds"], 1), "evaluate_seconds": report["seconds"],
                                    "cache_hits": report["cache_hits"]})
    results["warm_up_peak_rss_mb"] = round(warm["peak_rss_bytes"] / 2**20)
    results["load_average_after"] = os.getloadavg()[0]
    results["date"] = time.strftime("%Y-%m-%d")
    print(json.dumps(results, indent=2) if args.json else "\n".join(
        f"{r['rows']:>9,} rows  {r['bootstrap_rounds']:>5} rounds  peak RSS {r['peak_rss_mb']:>6} MB  {r['seconds']:>7} s"
        for r in results["runs"]))


if __name__ == "__main__":
    main()
