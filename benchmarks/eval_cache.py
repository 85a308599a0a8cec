"""First vs second `zstagger eval` (image-embedding cache cold, then warm) and `zstagger calibrate`.

    python benchmarks/eval_cache.py --model CKPT/vitb32 --workdir /tmp/zs-eval --json > results/eval_cache.json

Generates a labelled set of photo-sized JPEGs (1280x960) with zstagger.synthetic: eight
moderation labels x 100 images plus 200 images of none, 1,000 in all. Each command runs
as a subprocess, as a user runs it; the cache directory starts empty. The warm run's
time is split into interpreter start-up + imports (measured with -X importtime) and the
work itself (the report's own `seconds`).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import clean_env, emit, options

LABELS = ["explicit_nudity", "graphic_violence", "firearms", "knives_as_weapons", "drugs", "hate_symbols", "alcohol", "gambling"]


CPU: dict[str, float] = {}  # CPU seconds (user + sys) of each command: less sensitive to other load than wall time


def zstagger(*args: str, env: dict[str, str], profile_imports: bool = False) -> tuple[float, subprocess.CompletedProcess]:
    cmd = [sys.executable, *(["-X", "importtime"] if profile_imports else []), "-m", "zstagger.cli", *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU[args[0] + ("-profiled" if profile_imports else "")] = round(
        after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return seconds, proc


def import_seconds(stderr: str) -> dict[str, float]:
    """Cumulative import time of top-level packages, from -X importtime's lines."""
    out: dict[str, float] = {}
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = (part.strip() for part in line.split(":", 1)[1].split("|"))
            if not name.startswith(" ") and "." not in name and cumulative.isdigit():
                out[name] = out.get(name, 0.0) + int(cumulative) / 1e6
    return dict(sorted(out.items(), key=lambda kv: -kv[1])[:8])


def main() -> None:
    parser = options(__doc__, workdir=True, json_flag=True)
    parser.add_argument("--per-label", type=int, default=100)
    parser.add_argument("--none", type=int, default=200)
    parser.add_argument("--size", default="1280x960")
    args = parser.parse_args()
    work = Path(args.workdir)
    data = work / f"data-{len(LABELS) * args.per_label + args.none}-{args.size}"
    width, height = (int(v) for v in args.size.split("x"))
    if not data.exists():
        from zstagger.synthetic import write_labelled_folders

        print(f"generating {len(LABELS) * args.per_label + args.none} labelled {args.size} JPEGs in {data}...", file=sys.stderr)
        write_labelled_folders(data, LABELS, args.per_label, none=args.none, size=(width, height))
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = clean_env(ZSTAGGER_CACHE_DIR=str(cache), TOKENIZERS_PARALLELISM="false")
    common = ["--model", args.model, "--json", "--no-progress"]

    print("eval, cold cache...", file=sys.stderr)
    cold_s, cold = zstagger("eval", str(data), "-t", "moderation", *common, env=env)
    cold_cpu = CPU["eval"]
    print("eval, warm cache...", file=sys.stderr)
    warm_s, warm = zstagger("eval", str(data), "-t", "moderation", *common, env=env)
    warm_cpu = CPU["eval"]
    _, profiled = zstagger("eval", str(data), "-t", "moderation", *common, env=env, profile_imports=True)
    print("calibrate (warm cache)...", file=sys.stderr)
    calibrate_s, _ = zstagger("calibrate", str(data), "-t", "moderation", "--target-precision", "0.9",
                              "--per-action", "block=0.95", "-o", str(work / "moderation-calibrated.yaml"), *common, env=env)
    print("eval with --report (warm cache)...", file=sys.stderr)
    report_s, _ = zstagger("eval", str(data), "-t", "moderation", *common, "--report", str(work / "report"), env=env)

    a, b = json.loads(cold.stdout), json.loads(warm.stdout)
    volatile = {"seconds", "cache_hits", "cache_misses"}
    same = {k: v for k, v in a.items() if k not in volatile} == {k: v for k, v in b.items() if k not in volatile}
    result = {
        "model": args.model, "images": a["images"], "image_size": args.size,
        "dataset_bytes": sum(p.stat().st_size for p in data.rglob("*.jpg")),
        "eval_cold_s": round(cold_s, 2), "eval_cold_cache": [a["cache_hits"], a["cache_misses"]],
        "eval_warm_s": round(warm_s, 2), "eval_warm_cache": [b["cache_hits"], b["cache_misses"]],
        "ratio_cold_over_warm": round(cold_s / warm_s, 1),
        "eval_cold_cpu_s": cold_cpu, "eval_warm_cpu_s": warm_cpu,
        "ratio_cold_over_warm_cpu": round(cold_cpu / warm_cpu, 1),
        "load_average_after": os.getloadavg()[0],
        "warm_evaluate_seconds_in_process": b["seconds"],
        "warm_startup_and_imports_s": round(warm_s - b["seconds"], 2),
        "warm_imports_s": import_seconds(profiled.stderr),
        "warm_imports_torch": "torch" in import_seconds(profiled.stderr) or " torch\n" in profiled.stderr,
        "figures_identical_cold_vs_warm": same,
        "calibrate_warm_s": round(calibrate_s, 2),
        "calibrate_warm_cpu_s": CPU["calibrate"],
        "eval_with_report_warm_s": round(report_s, 2),
        "cache_file_bytes": sum(p.stat().st_size for p in cache.glob("image-embeddings.sqlite3*")),
        "cpu_count": os.cpu_count(),
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()
