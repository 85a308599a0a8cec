"""How long a heat map takes (``zstagger explain`` / ``POST /v1/explain``), next to tagging the same image.

    python benchmarks/explain_speed.py --model CHECKPOINT_DIR --images JPEG_DIR [-t moderation] [--count 8] [--grid 4]

Per image: one heat map (decode, shrink, 9 windows at the default grid of 4 and the whole
image embedded in one batch, scoring), one with sparse windows (5 and the whole image), and
tagging that image alone (one forward). The goal for the review page
is under a second per image on CPU for ViT-B/32.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from zstagger import Tagger
from zstagger.explain import explain_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("-t", "--taxonomy", default="moderation")
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--grid", type=int, default=4)
    args = parser.parse_args()
    files = sorted(str(p) for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.count]
    with Tagger(args.model, image_cache=False, explain=True) as tagger:
        taxonomy = tagger.resolve(args.taxonomy, None, None)
        explain_image(tagger, files[0], taxonomy, grid=args.grid)  # warm: text embeddings, threads
        tagger.tag(files[:1], taxonomy)
        heat, sparse, tag = [], [], []
        for f in files:  # interleaved, so that the machine's load weighs on each alike
            start = time.perf_counter()
            explain_image(tagger, f, taxonomy, grid=args.grid)
            heat.append(time.perf_counter() - start)
            start = time.perf_counter()
            explain_image(tagger, f, taxonomy, grid=args.grid, sparse=True)
            sparse.append(time.perf_counter() - start)
            start = time.perf_counter()
            tagger.tag([f], taxonomy)
            tag.append(time.perf_counter() - start)
    t = statistics.median(tag)
    print(f"{len(files)} images, grid {args.grid}, torch threads shared by {tagger.lanes} lanes; "
          f"tagging one image alone: median {t * 1e3:.0f} ms")
    for name, times in (("heat map", heat), ("heat map, sparse windows", sparse)):
        h = statistics.median(times)
        print(f"{name}: median {h * 1e3:.0f} ms/image (max {max(times) * 1e3:.0f}); ratio to tagging {h / t:.1f}x")


if __name__ == "__main__":
    main()
