"""A 10,000-category product taxonomy (entered descent, facets) against a 20-label one: tagging throughput and compile time.

    python benchmarks/deep_taxonomy.py --model CKPT/vitb32 --images JPEGS --workdir /tmp/zs-deep --json \\
        > results/deep_taxonomy.json

Writes a synthetic hierarchy in the format of Shopify's published dist files (categories.json
with --categories categories, --fan children per category under 20 verticals, attributes.json
with --attributes attributes of 8 values each, mapped to second-level categories), generates
the taxonomy with the same code as `zstagger taxonomies import-shopify`, then measures:

- cold compile: a new Tagger with an empty cache directory compiling it (every prompt through
  the text tower), and warm: a new Tagger with the text-embedding cache of the cold one;
- tagging throughput (images/s, top-5 scores, image cache off: every image decoded and
  encoded) with it and with a flat 20-label single-label taxonomy, alternated over --rounds,
  best round of each; and the labels each image was scored against;
- the scoring alone (milliseconds per image on the same embeddings, facets included): what
  the taxonomy's size adds to a whole image's time (``encode_ms_per_image_flat20``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from _common import emit, log, options, workload


def write_dist(folder: Path, count: int, fan: int, attributes: int) -> Path:
    """Synthetic dist/en files in Shopify's format: ``count`` categories, 20 verticals, ``fan`` children each."""
    folder.mkdir(parents=True, exist_ok=True)
    verticals, made = [], 0
    level_two: list[str] = []
    per_vertical = max(1, count // 20)
    for v in range(20):
        prefix = f"v{v}"
        cats: list[dict] = []
        queue = [(prefix, f"Vertical {v}", f"Vertical {v}", None, 0)]
        while queue and len(cats) < per_vertical and made < count:
            cid, name, full, parent, level = queue.pop(0)
            gid = f"gid://shopify/TaxonomyCategory/{cid}"
            cats.append({"id": gid, "level": level, "name": name, "full_name": full, "parent_id": parent,
                         "attributes": [], "children": [], "ancestors": []})
            made += 1
            if level == 1:
                level_two.append(gid)
            for k in range(1, fan + 1):
                child = f"kind {k} of {name.lower()}" if level < 2 else f"{name} variant {k}"
                queue.append((f"{cid}-{k}", child, f"{full} > {child}", gid, level + 1))
        verticals.append({"name": f"Vertical {v}", "prefix": prefix, "categories": cats})
    by_id = {c["id"]: c for vertical in verticals for c in vertical["categories"]}
    attrs = []
    for a in range(attributes):
        attr = {"id": f"gid://shopify/TaxonomyAttribute/{a + 1}", "name": f"Attribute {a}", "handle": f"attribute-{a}",
                "description": f"attribute {a}", "extended_attributes": [],
                "values": [{"id": f"gid://shopify/TaxonomyValue/{a * 10 + j}", "name": f"value {j} of {a}",
                            "handle": f"attribute-{a}__value-{j}"} for j in range(8)]}
        attrs.append(attr)
        for gid in level_two[a::max(1, attributes)]:
            by_id[gid]["attributes"].append({"id": attr["id"], "name": attr["name"], "handle": attr["handle"]})
    (folder / "categories.json").write_text(json.dumps({"version": "synthetic", "verticals": verticals}))
    (folder / "attributes.json").write_text(json.dumps({"version": "synthetic", "attributes": attrs}))
    return folder


def main() -> None:
    parser = options(__doc__, images=True, workdir=True, json_flag=True, count=64, size="640x480")
    parser.add_argument("--categories", type=int, default=10_000)
    parser.add_argument("--fan", type=int, default=8, help="Children per category.")
    parser.add_argument("--attributes", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--stop", type=float, default=0.0,
                        help="The descent's confidence stop (default 0: every image descends to a leaf, the most work).")
    args = parser.parse_args()
    from zstagger import Taxonomy
    from zstagger.product_taxonomy import read_dist, shopify_spec
    from zstagger.settings import Settings
    from zstagger.tagger import Tagger

    work = Path(args.workdir)
    images = workload(args)
    dist = write_dist(work / f"dist-{args.categories}-{args.fan}" / "en", args.categories, args.fan, args.attributes)
    start = time.perf_counter()
    deep = Taxonomy.parse(shopify_spec(read_dist(dist), name="deep", stop=args.stop))
    generate_s = time.perf_counter() - start
    flat = Taxonomy(name="flat20", labels=[{"name": f"category {i}"} for i in range(20)])
    log("deep_taxonomy", f"{len(deep.labels)} categories, {len(deep.facets)} facets; {len(images)} images")

    cache = work / f"cache-{time.time_ns()}"  # empty: the compile is cold
    settings = Settings(cache_dir=str(cache))
    compile_s = {}
    with Tagger(args.model, batch_size=args.batch_size, settings=settings, image_cache=False, explain=False) as tagger:
        tagger.model_info()  # the model loads before the clock starts: compile time alone
        tagger.encoder  # noqa: B018
        start = time.perf_counter()
        tagger.classifier(deep)
        compile_s["cold"] = time.perf_counter() - start
    with Tagger(args.model, batch_size=args.batch_size, settings=settings, image_cache=False, explain=False) as tagger:
        tagger.model_info()
        tagger.encoder  # noqa: B018
        start = time.perf_counter()
        compiled = tagger.classifier(deep)
        compile_s["warm_disk_cache"] = time.perf_counter() - start
        tagger.classifier(flat)
        best = {"flat20": 0.0, "deep": 0.0}
        scored_per_image = 0.0
        tagger.tag(images[: min(4, len(images))], flat, top_k=5)  # threads and lanes started
        for round_ in range(args.rounds):
            for name, taxonomy in (("flat20", flat), ("deep", deep)):
                before = compiled.labels_scored
                start = time.perf_counter()
                results = tagger.tag(images, taxonomy, top_k=5)
                rate = len(results) / (time.perf_counter() - start)
                best[name] = max(best[name], rate)
                if name == "deep":
                    scored_per_image = (compiled.labels_scored - before) / len(images)
                log("deep_taxonomy", f"round {round_ + 1}: {name} {rate:.2f} images/s")
        # the scoring alone, on the same embeddings (no decode, no encode): what the taxonomy's size costs
        from zstagger.embedder import NO_CACHE

        vectors = [v for _, v, _ in tagger.embed_batches(images, route=NO_CACHE)]
        scoring_ms = {}
        for name, taxonomy in (("flat20", flat), ("deep", deep)):
            classifier = tagger.classifier(taxonomy)
            start = time.perf_counter()
            for _ in range(3):
                for batch in vectors:
                    classifier.classifications(classifier.classify_batch(batch, 5))
            scoring_ms[name] = 1000 * (time.perf_counter() - start) / (3 * len(images))
    emit({
        "categories": len(deep.labels), "facets": len(deep.facets), "images": len(images),
        "generate_s": round(generate_s, 3), "compile_cold_s": round(compile_s["cold"], 3),
        "compile_warm_disk_cache_s": round(compile_s["warm_disk_cache"], 3),
        "labels_scored_per_image": round(scored_per_image, 1),
        "flat20_images_per_s": round(best["flat20"], 3), "deep_images_per_s": round(best["deep"], 3),
        "deep_vs_flat20_throughput": round(best["deep"] / best["flat20"], 3),
        "scoring_ms_per_image_flat20": round(scoring_ms["flat20"], 3),
        "scoring_ms_per_image_deep": round(scoring_ms["deep"], 3),
        "encode_ms_per_image_flat20": round(1000 / best["flat20"], 1),
    }, args.json)


if __name__ == "__main__":
    main()
