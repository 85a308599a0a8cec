"""Compiling a taxonomy with 500 example images: the first time, and again (image-embedding cache warm).

    python benchmarks/examples_compile.py --model CKPT/vitb32 --workdir /tmp/zs-examples --json > results/examples_compile.json

10 labels x 50 generated examples (224x168 JPEGs), a taxonomy file listing each label's
directory. Each compile is a fresh process, as `zstagger tag` starts: ``Tagger(model,
image_cache=True).classifier(taxonomy)``, timed from process start; the cache directory
starts empty.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import yaml
from _common import emit, options

from zstagger.synthetic import write_labelled_folders

LABELS = [f"class_{i}" for i in range(10)]
SCRIPT = (
    "import sys, time; t0 = time.perf_counter()\n"
    "from zstagger import Tagger, Taxonomy; from zstagger.settings import Settings\n"
    "t = Tagger(sys.argv[1], image_cache=True, settings=Settings(cache_dir=sys.argv[2]))\n"
    "c = t.classifier(Taxonomy.from_file(sys.argv[3]))\n"
    "print(time.perf_counter() - t0, t.model_loaded, 'torch' in sys.modules, sum(sum(k.values()) for k in c.image_counts.values()))"
)


def main() -> None:
    parser = options(__doc__, workdir=True, json_flag=True)
    parser.add_argument("--per-label", type=int, default=50, help="Example images per label (10 labels).")
    args = parser.parse_args()
    root = Path(args.workdir)
    examples = root / f"examples-{args.per_label}"
    if not examples.exists():
        write_labelled_folders(examples, LABELS, args.per_label, size=(224, 168))
    spec = {"name": "five-hundred", "labels": [{"name": n, "examples": [f"{examples.name}/{n}/"]} for n in LABELS]}
    (root / "five-hundred.yaml").write_text(yaml.safe_dump(spec))
    cache = root / f"cache-{time.time_ns()}"
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", SCRIPT, args.model, str(cache), str(root / "five-hundred.yaml")],
                             capture_output=True, text=True, check=True).stdout.split()
        runs.append({"seconds": round(float(out[0]), 2), "model_loaded": out[1] == "True", "torch_imported": out[2] == "True",
                     "examples": int(out[3])})
    report = {"model": args.model, "first": runs[0], "second": runs[1],
              "speedup": round(runs[0]["seconds"] / runs[1]["seconds"], 1)}
    emit(report, args.json)


if __name__ == "__main__":
    main()
