"""Learning curve of few-shot examples: held-out accuracy / average precision for K = 0..16 examples per label.

    python benchmarks/fewshot_curve.py --model CKPT/vitb32 --workdir /tmp/zs-fewshot --json > results/fewshot_curve_vitb32.json
    python benchmarks/fewshot_curve.py --model CKPT/tiny   --workdir /tmp/zs-fewshot --json > results/fewshot_curve_tiny.json

Two labelled sets generated with zstagger.synthetic, whose classes differ in colour,
texture and shape (image features of a random-weight model separate them; its text
features know nothing of them, and the label names are made-up words, so K = 0 is near
chance by design):

- single-label: 8 classes x 40 images; per repetition each class's images are shuffled,
  the first 16 are the pool examples are drawn from and the other 24 are the test set
  (the same test set for every K); metric: top-1 accuracy on the test images;
- multi-label: 300 images showing each of 6 labels with probability 0.3 (up to 3), plus
  a background label; half the images are the pool, half the test set; a label's K
  examples are pool images that show it, the background's are pool images that show
  none; metric: macro average precision over the labels on the test images.

- partial teaching: the single-label set with only 4 of its 8 classes given 8 examples
  each; accuracy on the taught classes' test images, and the share of the untaught classes'
  images given a taught label (by chance 0.5: text says nothing here; 1.0 means the taught
  labels sweep every image).

Every K runs through the real code: a taxonomy whose labels list their examples (paths),
compiled by ``Tagger.classifier`` (example embeddings read from the image-embedding cache,
as in production), then the compiled taxonomy scores the test images' embeddings. Both
three methods with their defaults: ``blend`` (weight 0.5, the default method), ``centroid``
(weight 0.5) and ``cache`` (alpha 1, beta 5.5).
Mean over repetitions (5 by default), with the standard deviation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from _common import emit, log, options

from zstagger import Label, Taxonomy
from zstagger.evaluation.metrics import average_precision
from zstagger.settings import Settings
from zstagger.synthetic import write_labelled_folders, write_labelled_manifest
from zstagger.tagger import Tagger

KS = (0, 1, 2, 4, 8, 16)
SINGLE = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
MULTI = ["kilo", "lima", "mike", "november", "oscar", "papa"]
METHODS = ("blend", "centroid", "cache")


def single_label_curve(tagger: Tagger, root: Path, reps: int, log, per_class: int = 40, ks: tuple[int, ...] = KS) -> dict:
    folders = root / f"single-{per_class}"
    pool = max(ks)  # each class's first images are the pool examples are drawn from, the rest the test set
    if not folders.exists():
        write_labelled_folders(folders, SINGLE, per_class, size=(224, 168))
    files = {c: sorted(str(p) for p in (folders / c).iterdir()) for c in SINGLE}
    refs = [f for c in SINGLE for f in files[c]]
    vectors = dict(zip(refs, tagger.embed_images(refs)))
    curve = {m: {k: [] for k in ks} for m in METHODS}
    for rep in range(reps):
        rng = np.random.default_rng(rep)
        order = {c: rng.permutation(files[c]).tolist() for c in SINGLE}
        test = [(f, i) for i, c in enumerate(SINGLE) for f in order[c][pool:]]
        embeds, truth = np.stack([vectors[f] for f, _ in test]), np.array([i for _, i in test])
        for method in METHODS:
            for k in ks:
                spec = Taxonomy(name=f"curve-single-{method}-{k}-{rep}", few_shot={"method": method},
                                labels=[Label(name=c, examples=order[c][:k]) for c in SINGLE])
                scores = tagger.classifier(spec).score(embeds).scores
                curve[method][k].append(float((scores.argmax(axis=1) == truth).mean()))
        log(f"single-label repetition {rep + 1}/{reps} done")
    return summarise(curve, "top-1 accuracy", chance=1 / len(SINGLE), test_images=len(test))


def partial_teaching(tagger: Tagger, root: Path, reps: int, k: int = 8, per_class: int = 40, pool: int = 16) -> dict:
    """Half the classes taught: do the taught labels take the untaught classes' images too?"""
    files = {c: sorted(str(p) for p in (root / f"single-{per_class}" / c).iterdir()) for c in SINGLE}
    refs = [f for c in SINGLE for f in files[c]]
    vectors = dict(zip(refs, tagger.embed_images(refs)))
    taught = SINGLE[: len(SINGLE) // 2]
    out: dict = {m: {"taught_accuracy": [], "untaught_given_taught": []} for m in METHODS}
    for rep in range(reps):
        rng = np.random.default_rng(rep)
        order = {c: rng.permutation(files[c]).tolist() for c in SINGLE}
        test = [(f, i) for i, c in enumerate(SINGLE) for f in order[c][pool:]]
        embeds, truth = np.stack([vectors[f] for f, _ in test]), np.array([i for _, i in test])
        is_taught = truth < len(taught)
        for method in METHODS:
            spec = Taxonomy(name=f"curve-partial-{method}-{rep}", few_shot={"method": method},
                            labels=[Label(name=c, examples=order[c][:k] if c in taught else []) for c in SINGLE])
            predicted = tagger.classifier(spec).score(embeds).scores.argmax(axis=1)
            out[method]["taught_accuracy"].append(float((predicted[is_taught] == truth[is_taught]).mean()))
            out[method]["untaught_given_taught"].append(float((predicted[~is_taught] < len(taught)).mean()))
    return {"k": k, "taught": taught, "methods": {m: {key: round(float(np.mean(v)), 3) for key, v in values.items()}
                                                  for m, values in out.items()}}


def multi_label_curve(tagger: Tagger, root: Path, reps: int, log, images: int = 300, ks: tuple[int, ...] = KS) -> dict:
    manifest = root / f"multi-{images}" / "manifest.jsonl"
    if not manifest.exists():
        write_labelled_manifest(manifest.parent, MULTI, images, rate=0.3, size=(224, 168))
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    refs = [str(manifest.parent / row["image"]) for row in rows]
    truth = np.array([[name in row["labels"] for name in MULTI] for row in rows])
    vectors = np.stack(tagger.embed_images(refs))
    curve = {m: {k: [] for k in ks} for m in METHODS}
    for rep in range(reps):
        rng = np.random.default_rng(100 + rep)
        order = rng.permutation(len(rows))
        pool, test = order[: len(rows) // 2], order[len(rows) // 2 :]
        for method in METHODS:
            for k in ks:
                labels = [Label(name=name, negatives=["something else"],
                                examples=[refs[i] for i in pool[truth[pool, j]][:k]]) for j, name in enumerate(MULTI)]
                background = [refs[i] for i in pool[~truth[pool].any(axis=1)][:k]]
                spec = Taxonomy(name=f"curve-multi-{method}-{k}-{rep}", mode="multi", few_shot={"method": method},
                                labels=[*labels, Label(name="nothing", background=True, examples=background)])
                scores = tagger.classifier(spec).score(vectors[test]).scores
                aps = [average_precision(truth[test, j], scores[:, j]) for j in range(len(MULTI)) if truth[test, j].any()]
                curve[method][k].append(float(np.mean(aps)))
        log(f"multi-label repetition {rep + 1}/{reps} done")
    prevalence = float(truth.mean())
    return summarise(curve, "macro average precision", chance=prevalence, test_images=len(rows) - len(rows) // 2)


def summarise(curve: dict, metric: str, chance: float, test_images: int) -> dict:
    return {
        "metric": metric, "chance": round(chance, 3), "test_images": test_images,
        "methods": {m: {str(k): {"mean": round(float(np.mean(v)), 3), "std": round(float(np.std(v)), 3)} for k, v in ks.items()}
                    for m, ks in curve.items()},
    }


def main() -> None:
    parser = options(__doc__, workdir=True, json_flag=True)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--max-k", type=int, default=max(KS), help="Largest K (each class's pool of examples).")
    parser.add_argument("--per-class", type=int, default=40, help="Images per single-label class (pool + test).")
    parser.add_argument("--multi-images", type=int, default=300, help="Images of the multi-label set.")
    args = parser.parse_args()
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    ks = tuple(k for k in KS if k <= args.max_k)
    if args.per_class <= max(ks):
        raise SystemExit(f"--per-class must be over --max-k ({max(ks)}): the rest of each class is its test set")
    progress = lambda msg: log("fewshot_curve", msg)  # noqa: E731

    started = time.perf_counter()
    settings = Settings(model=args.model, cache_dir=str(root / f"cache-{Path(args.model).name}"))
    with Tagger(settings=settings, image_cache=True) as tagger:
        report = {"model": args.model, "reps": args.reps, "ks": list(ks),
                  "single_label": single_label_curve(tagger, root, args.reps, progress, args.per_class, ks),
                  "multi_label": multi_label_curve(tagger, root, args.reps, progress, args.multi_images, ks),
                  "partial": partial_teaching(tagger, root, args.reps, min(8, max(ks)), args.per_class, max(ks))}
    report["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        emit(report)
        return
    for name in ("single_label", "multi_label"):
        part = report[name]
        print(f"{name} ({part['metric']}, chance {part['chance']}, {part['test_images']} test images):")
        print("  K       " + "".join(f"{k:>14}" for k in ks))
        for method, values in part["methods"].items():
            print(f"  {method:<8}" + "".join(f"{values[str(k)]['mean']:>8.3f} ±{values[str(k)]['std']:.2f}" for k in ks))
    partial = report["partial"]
    print(f"partial teaching ({len(partial['taught'])} of {len(SINGLE)} classes, K={partial['k']}):")
    for method, values in partial["methods"].items():
        print(f"  {method:<8} taught accuracy {values['taught_accuracy']:.3f}, untaught images given a taught label "
              f"{values['untaught_given_taught']:.3f} (chance 0.5)")


if __name__ == "__main__":
    main()
