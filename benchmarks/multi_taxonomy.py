"""Several taxonomies in one pass: what tagging with two costs, against tagging with one.

    python /work/shared/tools/make_jpeg_workload.py /tmp/jpegs 256
    python benchmarks/multi_taxonomy.py --model /work/ckpt/vitb32 --images /tmp/jpegs [--rounds 3] [--json]

Each image is read, decoded and encoded once, then scored against each taxonomy (text
embeddings compiled once per taxonomy, before timing); a second taxonomy adds only its
numpy scoring and its result objects. Measured end to end (``Tagger.tag``, trail on as by
default) with ``-t moderation`` alone, then ``moderation`` and ``ecommerce`` together, rounds
interleaved, best of each; the figure is the ratio of the two, taken in one run (target:
at most 1.1). Also reported: the separate-runs ratio (two single-taxonomy runs, what the
image costs twice), and that the images were encoded once (counted at the encoder).
"""

from __future__ import annotations

import time

from _common import emit, log, options, workload

from zstagger import Tagger


def main() -> None:
    parser = options(__doc__, images=True, json_flag=True, count=64, size="1280x960")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds; the best of each is kept.")
    parser.add_argument("--second", default="ecommerce", help="The taxonomy added to moderation.")
    args = parser.parse_args()
    files = workload(args)
    pair = ["moderation", args.second]
    with Tagger(args.model, image_cache=False) as tagger:
        log("multi_taxonomy", f"{len(files)} images, {tagger.model_name}; warming up")
        tagger.tag(files[:8], taxonomies=pair)  # pools, both taxonomies' text embeddings
        encoded = {"images": 0}
        encode = tagger.encoder.encode_images

        def counting(pixels):
            encoded["images"] += len(pixels)
            return encode(pixels)

        tagger.encoder.encode_images = counting  # type: ignore[method-assign]
        one, two, apart = [], [], []
        for round_ in range(args.rounds):
            log("multi_taxonomy", f"round {round_ + 1} of {args.rounds}")
            start = time.perf_counter()
            tagger.tag(files, "moderation")
            one.append(time.perf_counter() - start)
            encoded["images"] = 0
            start = time.perf_counter()
            results = tagger.tag(files, taxonomies=pair)
            two.append(time.perf_counter() - start)
            once = encoded["images"]
            start = time.perf_counter()
            tagger.tag(files, pair[0])
            tagger.tag(files, pair[1])
            apart.append(time.perf_counter() - start)
        assert all(list(r.taxonomies) == pair for r in results)
    emit({
        "images": len(files),
        "model": args.model,
        "taxonomies": "+".join(pair),
        "one_taxonomy_ms_per_image": round(1e3 * min(one) / len(files), 3),
        "two_taxonomies_ms_per_image": round(1e3 * min(two) / len(files), 3),
        "two_taxonomies_vs_one": round(min(two) / min(one), 3),
        "two_separate_runs_vs_one": round(min(apart) / min(one), 3),
        "images_encoded_for_two": once,
    }, args.json)


if __name__ == "__main__":
    main()
