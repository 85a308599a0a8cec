"""What the decision trail (``explanation``) costs, as a share of tagging time.

    python benchmarks/trail_cost.py --model CHECKPOINT_DIR --images JPEG_DIR [-t moderation] [--rounds 5]

Tagging time per image is measured end to end (decode, preprocess, forward, scoring,
result objects) with the trail off. The trail's own cost is measured where it is spent,
on the same embeddings: building result objects (``Tagger.results``) and JSON lines
(``Tagger.result_lines``, the store's re-tag path) with the trail on and off, rounds
interleaved, best of each. The figure that matters is (results on - results off) per
image / tagging time per image: a ratio of two times taken in one run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from zstagger import Tagger


def best_time(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("-t", "--taxonomy", default="moderation")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    files = sorted(str(p) for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    on, off = Tagger(args.model, explain=True, image_cache=False), Tagger(args.model, explain=False, image_cache=False)
    taxonomy = on.resolve(args.taxonomy, None, None)
    off.tag(files[:32], taxonomy)  # warm: pools, text embeddings
    on.tag(files[:32], taxonomy)
    tag_wall = best_time(lambda: off.tag(files, taxonomy), max(1, args.rounds // 2))
    embeds = np.stack(on.embed_images(files))
    names = [Path(f).name for f in files]
    # Many rows, so that the per-row costs are measured well above the timer's resolution.
    reps = max(1, 4096 // len(files))
    big = np.concatenate([embeds] * reps)
    big_names = names * reps
    errors = [None] * len(big_names)

    def results(tagger):
        return lambda: [tagger.results(taxonomy, big_names[i:i + 32], big[i:i + 32], errors[i:i + 32])
                        for i in range(0, len(big_names), 32)]

    def lines(tagger):
        return lambda: tagger.result_lines(taxonomy, big_names, big)

    timings = {"results off": [], "results on": [], "lines off": [], "lines on": []}
    for _ in range(args.rounds):
        timings["results off"].append(best_time(results(off), 1))
        timings["results on"].append(best_time(results(on), 1))
        timings["lines off"].append(best_time(lines(off), 1))
        timings["lines on"].append(best_time(lines(on), 1))
    per_image = {k: min(v) / len(big_names) for k, v in timings.items()}
    tag_per_image = tag_wall / len(files)
    extra = per_image["results on"] - per_image["results off"]
    print(f"images {len(files)}, taxonomy {taxonomy.name} ({len(taxonomy.labels)} labels), scored rows {len(big_names)}")
    print(f"tagging (trail off), end to end:        {tag_per_image * 1e3:8.3f} ms/image")
    for key, value in per_image.items():
        print(f"{key:40} {value * 1e6:8.1f} us/image")
    print(f"trail cost, result objects:            {extra * 1e6:8.1f} us/image = {100 * extra / tag_per_image:.2f}% of tagging time")
    line_extra = per_image["lines on"] - per_image["lines off"]
    print(f"trail cost, JSON lines (store re-tag): {line_extra * 1e6:8.1f} us/image = {100 * line_extra / tag_per_image:.2f}% "
          f"of tagging time, {per_image['lines on'] / per_image['lines off']:.2f}x re-tag time")
    on.close()
    off.close()


if __name__ == "__main__":
    main()
