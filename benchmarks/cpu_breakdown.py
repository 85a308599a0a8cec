"""Where the CPU goes: core-milliseconds per image for each stage, and for the whole.

    python benchmarks/cpu_breakdown.py --model CHECKPOINT_DIR --images JPEG_DIR [-t moderation]

If end-to-end CPU per image equals decode + forward and the process keeps every core
busy, tagging is compute-bound: the only way to go faster is less work per image.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from zstagger import Tagger


def measure(name: str, fn, count: int) -> None:
    wall, cpu = time.perf_counter(), os.times()
    fn()
    wall, after = time.perf_counter() - wall, os.times()
    used = (after.user - cpu.user) + (after.system - cpu.system)
    print(f"{name:28} {count / wall:7.1f} img/s {used / count * 1e3:7.2f} core-ms/img {used / wall:5.2f} cores busy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("-t", "--taxonomy", default="moderation")
    args = parser.parse_args()
    files = sorted(str(p) for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    tagger = Tagger(args.model)
    tagger.tag(files[:64], args.taxonomy)  # warm: pools, taxonomy embeddings
    loader, lanes = tagger._pools()
    print(f"lanes {tagger.lanes}, loader threads {tagger.loader_threads}, precision {tagger.encoder.dtype}, cpus {os.cpu_count()}")
    measure("decode + preprocess", lambda: list(loader.map(tagger._prepare, files)), len(files))
    pixels = np.stack([tagger._prepare(f) for f in files[:32]])
    measure("vision forward (lanes)", lambda: list(lanes.map(tagger.encoder.encode_images, [pixels] * 8)), 256)
    measure("end to end (Tagger.tag)", lambda: tagger.tag(files, args.taxonomy), len(files))
    tagger.close()


if __name__ == "__main__":
    main()
