"""Where the CPU goes: core-milliseconds per image for each stage, and for the whole.

    python benchmarks/cpu_breakdown.py --model CHECKPOINT_DIR --images JPEG_DIR [-t moderation]

If end-to-end CPU per image equals decode + forward and the process keeps every core
busy, tagging is compute-bound: the only way to go faster is less work per image.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from _common import options, workload

from zstagger import Tagger


def measure(name: str, fn, count: int) -> None:
    wall, cpu = time.perf_counter(), os.times()
    fn()
    wall, after = time.perf_counter() - wall, os.times()
    used = (after.user - cpu.user) + (after.system - cpu.system)
    print(f"{name:28} {count / wall:7.1f} img/s {used / count * 1e3:7.2f} core-ms/img {used / wall:5.2f} cores busy")


def main() -> None:
    parser = options(__doc__, images=True, taxonomy=True)
    parser.add_argument("--forward-batches", type=int, default=8, help="Batches of 32 through the lanes for the forward figure.")
    args = parser.parse_args()
    files = workload(args)
    tagger = Tagger(args.model)
    tagger.tag(files[:64], args.taxonomy)  # warm: pools, taxonomy embeddings
    print(f"lanes {tagger.lanes}, loader threads {tagger.loader_threads}, precision {tagger.encoder.dtype}, cpus {os.cpu_count()}")
    # Decoding and preprocessing alone, in the loader threads (what the pipeline's prepare stage does on a miss).
    measure("decode + preprocess", lambda: tagger.preprocess(files), len(files))
    pixels = np.stack([p for p in tagger.preprocess(files[:32]) if isinstance(p, np.ndarray)])
    with ThreadPoolExecutor(tagger.lanes) as lanes:  # the model alone, as many forwards at once as the tagger runs
        batches = [pixels] * args.forward_batches
        measure("vision forward (lanes)", lambda: list(lanes.map(tagger.encoder.encode_images, batches)),
                len(pixels) * len(batches))
    measure("end to end (Tagger.tag)", lambda: tagger.tag(files, args.taxonomy), len(files))
    tagger.close()


if __name__ == "__main__":
    main()
