"""Tagging with 100,000 known images against none: throughput, compile time, matching cost.

    python benchmarks/known_images.py --model CKPT/vitb32 --images JPEGS --workdir /tmp/zs-known --json > results/known_images.json

One Tagger (one loaded model), two taxonomies: the built-in ``moderation``, and the same
plus a label matched by known images alone (``known_copy``, match_threshold 0.95, action
block) whose 100,000 known images are an embedded vector pack in a file beside the
taxonomy file, as ``zstagger examples embed`` writes it. The known vectors are random
unit vectors (the cost of brute-force matching does not depend on what they show), except
the first, which is the embedding of the first workload image: that image must match it.

Passes over the workload alternate between the two taxonomies (``--rounds`` each, after a
warm-up of each), so that the machine's drift hits both alike; the ratio of their medians
is the slowdown. Also: the time to compile the known-image taxonomy (read, check and
unpack 100,000 vectors), and the matching alone, per image, on embeddings already computed.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from pathlib import Path

import numpy as np
import yaml
from _common import emit, log, options, workload

from zstagger.fewshot import ImageSet, build_pack
from zstagger.registry import get_taxonomy
from zstagger.tagger import Tagger
from zstagger.taxonomy import Taxonomy


def known_taxonomy(workdir: Path, tagger: Tagger, first_image: str, count: int) -> Taxonomy:
    first = tagger.embed_images([first_image])[0]
    dim = first.shape[0]
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(count, dim)).astype(np.float32)
    vectors[0] = first
    names = [f"known/{i:06d}.jpg" for i in range(count)]
    pack = build_pack(dim, [ImageSet.of("known_copy", "known_images", ["known/"], names, vectors)])
    (workdir / "moderation-known.vectors").write_bytes(pack)
    spec = get_taxonomy("moderation").spec_dict()
    spec["name"] = "moderation-known"
    spec["labels"].append({"name": "known_copy", "known_images": ["known/"], "match_threshold": 0.95, "action": "block"})
    spec["image_vectors"] = {tagger.fingerprint: {
        "model": tagger.model_name, "preprocessing": tagger.preprocessing, "dim": dim, "count": count,
        "sha256": hashlib.sha256(pack).hexdigest(), "size": len(pack), "file": "moderation-known.vectors"}}
    path = workdir / "moderation-known.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return Taxonomy.from_file(path)


def main() -> None:
    parser = options(__doc__, images=True, workdir=True, json_flag=True)
    parser.add_argument("--known", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    images = workload(args)
    progress = lambda msg: log("known_images", msg)  # noqa: E731

    with Tagger(args.model) as tagger:
        plain = get_taxonomy("moderation")
        with_known = known_taxonomy(workdir, tagger, images[0], args.known)
        tagger.classifier(plain)
        started = time.perf_counter()
        compiled = tagger.classifier(with_known)
        compile_seconds = time.perf_counter() - started
        progress(f"compiled {args.known:,} known images in {compile_seconds:.2f}s")
        first = tagger.tag(images[:1], with_known)[0]
        assert first.matches and first.matches[0].image == "known/000000.jpg", first

        passes: dict[str, list[float]] = {"moderation": [], "moderation + known": []}
        for round_ in range(args.rounds + 1):  # round 0 warms up both
            for name, spec in (("moderation", plain), ("moderation + known", with_known)):
                started = time.perf_counter()
                results = tagger.tag(images, spec)
                rate = len(images) / (time.perf_counter() - started)
                assert all(r.error is None for r in results)
                if round_:
                    passes[name].append(rate)
                progress(f"round {round_} {name}: {rate:.1f} img/s")

        rng = np.random.default_rng(1)
        embeds = rng.normal(size=(256, compiled.known.vectors.shape[1])).astype(np.float32)
        embeds /= np.linalg.norm(embeds, axis=1, keepdims=True)
        timings = {}
        for name, spec in (("moderation", plain), ("moderation + known", with_known)):
            c = tagger.classifier(spec)
            started = time.perf_counter()
            for start in range(0, len(embeds), 32):
                c.classify(embeds[start : start + 32])
            timings[name] = (time.perf_counter() - started) / len(embeds) * 1000

    median = {k: statistics.median(v) for k, v in passes.items()}
    report = {
        "model": args.model, "images": len(images), "known_images": args.known, "rounds": args.rounds,
        "img_per_s": {k: [round(x, 2) for x in v] for k, v in passes.items()},
        "median_img_per_s": {k: round(v, 2) for k, v in median.items()},
        "slowdown_median": round(median["moderation"] / median["moderation + known"], 4),
        "slowdown_best": round(max(passes["moderation"]) / max(passes["moderation + known"]), 4),
        "compile_seconds": round(compile_seconds, 3),
        "known_matrix_mib": round(compiled.known.vectors.nbytes / 2**20, 1),
        "scoring_ms_per_image": {k: round(v, 3) for k, v in timings.items()},
        "first_image_match": first.matches[0].model_dump(),
    }
    emit(report, args.json)


if __name__ == "__main__":
    main()
