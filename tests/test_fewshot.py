"""Few-shot: example and counter-example images, known-image lists, self-contained taxonomies.

The maths against independent computations; examples moving scores the intended way on
the real tiny model; near-copy matching; the embedded taxonomy tagging identically in
process and in a real worker that cannot read the image files; bad input as one line."""

import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from harness import RedisServer, Worker, run_cli
from PIL import Image

from zstagger import Taxonomy
from zstagger.engine.fewshot import ImageEvidence, best_matches, blend_prototypes
from zstagger.engine.scoring import ScoringPlan
from zstagger.errors import ExamplesError, TaxonomyError
from zstagger.fewshot import ImageSet, build_pack, read_pack
from zstagger.synthetic import labelled_image, write_labelled_folders
from zstagger.tagger import Tagger

CLASSES = ["alpha", "bravo", "charlie", "delta"]


def unit(rng, *shape):
    x = rng.normal(size=shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# -- the maths, against computations written out by hand ---------------------------------------


def test_prototype_blend_equals_an_independent_computation():
    rng = np.random.default_rng(0)
    text = rng.normal(size=(4, 16))  # not normalised: the blend normalises it
    sets = [rng.normal(size=(3, 16)), rng.normal(size=(5, 16))]
    set_index = [0, -1, 1, -1]  # prototypes 1 and 3 have no examples
    got = blend_prototypes(text, set_index, sets, weight=0.3)

    def norm(v):
        return v / np.sqrt(sum(x * x for x in v))

    cents = [norm(np.mean([norm(e) for e in s], axis=0)) for s in sets]
    neutral = norm(np.mean(cents, axis=0))
    for j, s in enumerate(set_index):
        image = cents[s] if s >= 0 else neutral
        expected = norm(0.7 * norm(text[j]) + 0.3 * image)
        np.testing.assert_allclose(got[j], expected, atol=1e-6)
    np.testing.assert_allclose(blend_prototypes(text, set_index, [], 0.3), text / np.linalg.norm(text, axis=1, keepdims=True),
                               atol=1e-6)  # no sets: text alone


@pytest.mark.parametrize("method", ["centroid", "cache"])
def test_image_evidence_logits_equal_an_independent_computation(method):
    rng = np.random.default_rng(1)
    labels, rivals, images = unit(rng, 3, 8), unit(rng, 2, 8), unit(rng, 5, 8)
    sets = [unit(rng, 4, 8), unit(rng, 2, 8)]
    label_sets, rival_sets, weight, beta, scale = [1, -1, 0], [-1, 0], 0.3, 4.0, 20.0
    evidence = (ImageEvidence.centroid(sets, label_sets, rival_sets, weight) if method == "centroid"
                else ImageEvidence.cache(sets, label_sets, rival_sets, weight, beta))
    mask = np.array([[True, False], [True, True], [False, True]])
    plan = ScoringPlan("contrastive", labels, scale, competitor_embeds=rivals, competitor_mask=mask, evidence=evidence)
    scores, cosines = plan.score(images)

    def cos(a, b):
        return float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)))

    means = [np.mean(s, axis=0) for s in sets]
    mu = np.mean(means, axis=0)
    for b, x in enumerate(images):
        if method == "centroid":  # SimpleShot's centring, blended with the zero-shot logit
            per_set = [cos(x - mu, m - mu) for m in means]
            neutral, text_weight = 0.0, 1 - weight
        else:  # Tip-Adapter's affinities, averaged per set
            per_set = [np.mean([np.exp(-beta * (1 - float(x @ e))) for e in s]) for s in sets]
            neutral, text_weight = np.mean(per_set), 1.0

        def logit(text, s, x=x, per_set=per_set, neutral=neutral, text_weight=text_weight):
            return scale * text_weight * float(x @ text) + scale * weight * (per_set[s] if s >= 0 else neutral)

        for i in range(3):
            own = logit(labels[i], label_sets[i])
            others = [logit(rivals[j], rival_sets[j]) for j in range(2) if mask[i, j]]
            expected = np.exp(own) / (np.exp(own) + sum(np.exp(o) for o in others))
            assert abs(scores[b, i] - expected) < 1e-5
            assert abs(cosines[b, i] - float(x @ labels[i])) < 1e-6  # the reported cosine stays image-text


def test_best_matches_equal_brute_force():
    rng = np.random.default_rng(2)
    known, images = unit(rng, 50, 12), unit(rng, 7, 12)
    bounds = [(0, 20), (20, 21), (21, 50)]
    rows, best = best_matches(images, known, bounds)
    for b in range(7):
        for j, (start, stop) in enumerate(bounds):
            cos = [float(images[b] @ known[r]) for r in range(start, stop)]
            assert rows[b, j] == start + int(np.argmax(cos)) and abs(best[b, j] - max(cos)) < 1e-6


def test_packs_round_trip_and_refuse_tampering():
    rng = np.random.default_rng(3)
    sets = [ImageSet.of("a", "examples", ["ex/"], ["ex/1.jpg", "ex/2.jpg"], unit(rng, 2, 8)),
            ImageSet.of("b", "known_images", ["k.jpg"], ["k.jpg"], unit(rng, 1, 8))]
    data = build_pack(8, sets)
    pack = read_pack(data)
    assert pack.count == 3 and [s.names for s in pack.sets] == [("ex/1.jpg", "ex/2.jpg"), ("k.jpg",)]
    np.testing.assert_array_equal(pack.sets[0].vectors, sets[0].vectors)  # the same numbers, read or just made
    with pytest.raises(ExamplesError, match="SHA-256"):
        read_pack(data[:-1] + b"\0", sha256=pack.sha256)
    for broken in (data[:-2], b"not a pack", data + b"x"):
        with pytest.raises(ExamplesError, match="unreadable"):
            read_pack(broken)


def test_fingerprints_of_taxonomies_without_images_are_unchanged():
    import hashlib

    from zstagger.registry import get_taxonomy

    spec = get_taxonomy("moderation")
    old = json.dumps(spec.model_dump(mode="json", exclude={"calibration", "few_shot", "examples_root", "image_vectors", "media",
                                                     "text_fusion", "facets", "descent", "metadata", "source"}),
                     sort_keys=True, separators=(",", ":"))
    old = json.loads(old)
    for label in old["labels"]:
        for key in ("examples", "negative_examples", "known_images", "match_threshold"):
            del label[key]
    canonical = json.dumps(old, sort_keys=True, separators=(",", ":"))
    assert spec.fingerprint == hashlib.sha256(canonical.encode()).hexdigest()[:16]


@pytest.mark.parametrize("label,mode,message", [
    ({"name": "k", "known_images": ["k/"]}, "multi", "known_images need a match_threshold"),
    ({"name": "k", "text": "k", "match_threshold": 0.9}, "single", "match_threshold applies to known_images"),
    ({"name": "k", "known_images": ["k/"], "match_threshold": 1.5}, "multi", "match_threshold 1.5 is outside (0, 1]"),
    ({"name": "k", "text": "k", "negative_examples": ["toy.jpg"]}, "single", "negative_examples apply to multi-label"),
    ({"name": "k", "known_images": ["k/"], "match_threshold": 0.9, "threshold": 0.5}, "multi", "threshold does not apply to a label matched by known_images alone"),
    ({"name": "k", "text": "k", "examples": ["a.jpg"]}, "single", "its examples are the only image set"),
    ({"name": "k", "text": "k", "examples": ["ftp://host/x.jpg"]}, "single", "examples: 'ftp://host/x.jpg': only http:// and https:// URLs"),
])
def test_bad_image_fields_are_named(label, mode, message):
    with pytest.raises(TaxonomyError) as raised:
        Taxonomy(name="t", mode=mode, labels=[label, {"name": "other", "negatives": ["x"]}])
    assert f"taxonomy 't': label 'k': {message}" in str(raised.value)


# -- examples on the tiny model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fewshot")
    write_labelled_folders(root / "images", CLASSES, 10, none=8, size=(96, 72))
    return root


@pytest.fixture(scope="module")
def tagger(tiny_model_dir, tmp_path_factory):
    from zstagger.settings import Settings

    settings = Settings(cache_dir=str(tmp_path_factory.mktemp("cache")))
    with Tagger(str(tiny_model_dir), device="cpu", precision="fp32", batch_size=8, settings=settings) as tagger:
        yield tagger


def spec_file(directory, spec):
    path = directory / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return Taxonomy.from_file(path)


def examples_of(name, count=4):
    return [f"images/{name}/{i:04d}.jpg" for i in range(count)]


def held_out(data, name):
    return [str(data / "images" / name / f"{i:04d}.jpg") for i in range(4, 10)]


@pytest.mark.parametrize("method", ["centroid", "blend", "cache"])
def test_examples_raise_their_labels_score_on_images_like_them(data, tagger, method):
    plain = spec_file(data, {"name": "plain", "labels": [{"name": c} for c in CLASSES]})
    taught = spec_file(data, {"name": f"taught-{method}", "few_shot": {"method": method},
                              "labels": [{"name": c, "examples": examples_of(c)} for c in CLASSES]})
    hits = {}
    for spec in (plain, taught):
        correct, own = 0, []
        for name in CLASSES:
            for result in tagger.tag(held_out(data, name), spec):
                scores = {s.label: s.score for s in result.scores}
                own.append(scores[name])
                correct += result.scores[0].label == name
        hits[spec.name] = (correct, np.mean(own))
    (c0, s0), (c1, s1) = hits["plain"], hits[f"taught-{method}"]
    assert s1 > s0 + 0.2 and c1 >= 15 and c1 > c0 + 8, hits  # 24 held-out images, 4 classes: chance is 6 (text gets 5)


def test_labels_with_examples_win_only_on_images_like_them(data, tagger):
    # Labels without examples are not swept aside: examples lift their label only where images look like them.
    spec = spec_file(data, {"name": "one-taught", "labels": [
        {"name": "alpha", "examples": examples_of("alpha")}, {"name": "bravo", "examples": examples_of("bravo")},
        {"name": "charlie"}, {"name": "delta"}]})
    plain = spec_file(data, {"name": "plain2", "labels": [{"name": c} for c in CLASSES]})
    before = {r.image: {s.label: s.score for s in r.scores} for r in tagger.tag(held_out(data, "charlie"), plain)}
    after = {r.image: {s.label: s.score for s in r.scores} for r in tagger.tag(held_out(data, "charlie"), spec)}
    assert np.mean([after[i]["alpha"] + after[i]["bravo"] for i in after]) < 0.8  # not a sweep by the taught labels
    alpha_images = tagger.tag(held_out(data, "alpha"), spec)
    assert np.mean([s.score for r in alpha_images for s in r.scores if s.label == "alpha"]) > \
        np.mean([before[i]["alpha"] for i in before]) + 0.2


def test_counter_examples_lower_a_labels_score_on_look_alikes(data, tagger):
    def spec(name, counter):
        return spec_file(data, {"name": name, "mode": "multi", "labels": [
            {"name": "firearm", "text": "a firearm", "examples": examples_of("alpha"), "negative_examples": examples_of(counter)},
            {"name": "safe", "background": True}]})

    def mean_score(taxonomy, images):
        return np.mean([r.scores[0].score for r in tagger.tag(held_out(data, images), taxonomy)])

    elsewhere, look_alikes = spec("m1", "charlie"), spec("m2", "bravo")  # the same but for what the counter-examples show
    assert mean_score(look_alikes, "bravo") < mean_score(elsewhere, "bravo") - 0.1  # images like them drop
    assert mean_score(look_alikes, "charlie") > mean_score(elsewhere, "charlie") + 0.1  # and the others no longer do
    assert mean_score(look_alikes, "alpha") > 0.5  # the label itself still fires on images like its examples


# -- known images -----------------------------------------------------------------------------------


def jpeg(image, quality=90):
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_known_images_match_exact_reencoded_and_resized_copies_only(tmp_path, tagger):
    known = tmp_path / "known"
    known.mkdir()
    originals = [labelled_image([i % 4], seed=500 + i, size=(160, 120)) for i in range(12)]
    for i, image in enumerate(originals):
        (known / f"k{i:02d}.jpg").write_bytes(jpeg(image))
    spec = spec_file(tmp_path, {"name": "blocklist", "mode": "multi", "labels": [
        {"name": "known_bad", "known_images": ["known/"], "match_threshold": 0.995, "action": "block"},
        {"name": "weapon", "text": "a weapon", "negatives": ["a toy"]}]})
    queries = tmp_path / "q"
    queries.mkdir()
    (queries / "copy.jpg").write_bytes((known / "k05.jpg").read_bytes())
    (queries / "reencoded.jpg").write_bytes(jpeg(Image.open(known / "k05.jpg"), quality=55))
    (queries / "resized.jpg").write_bytes(jpeg(originals[5].resize((120, 90))))
    (queries / "unrelated.jpg").write_bytes(jpeg(labelled_image([], seed=9, size=(160, 120))))
    results = {r.image.rsplit("/", 1)[-1]: r for r in tagger.tag(sorted(map(str, queries.iterdir())), spec)}
    for name in ("copy.jpg", "reencoded.jpg", "resized.jpg"):
        r = results[name]
        assert "known_bad" in r.tags and r.verdict == "block", r
        assert r.matches[0].label == "known_bad" and r.matches[0].image == "known/k05.jpg" and r.matches[0].cosine >= 0.995
    assert results["copy.jpg"].matches[0].cosine > 0.9999
    unrelated = results["unrelated.jpg"]
    assert "known_bad" not in unrelated.tags and unrelated.matches is None and unrelated.verdict == "allow"
    assert "matches" not in json.loads(unrelated.to_json())  # outputs without matches read as before
    score = next(s for s in unrelated.scores if s.label == "known_bad")
    assert score.score == score.cosine < 0.995  # a label matched alone reports its best cosine


# -- a self-contained taxonomy through a real worker that cannot read the files --------------------


def test_embedded_taxonomy_tags_identically_in_process_and_in_a_worker_without_the_files(tmp_path, tiny_model_dir):
    from zstagger.testing import make_tiny_checkpoint

    source = tmp_path / "source"
    write_labelled_folders(source / "ex", CLASSES[:3], 4, size=(96, 72))
    known = source / "known"  # enough known images for a pack over the inline limit: it goes through Redis
    known.mkdir()
    for i in range(1000):
        labelled_image([i % 4], seed=2000 + i, size=(32, 24)).save(known / f"{i:04d}.png")
    (source / "tax.yaml").write_text(yaml.safe_dump({"name": "shop-plus", "mode": "multi", "labels": [
        {"name": "alpha", "examples": ["ex/alpha/"], "negatives": ["something else"]},
        {"name": "bravo", "examples": ["ex/bravo/"], "negative_examples": ["ex/charlie/"], "negatives": ["x"]},
        {"name": "banned", "known_images": ["known/"], "match_threshold": 0.995, "action": "block"},
        {"name": "none", "background": True}]}))
    queries = tmp_path / "queries"
    write_labelled_folders(queries, CLASSES[:2], 3, size=(96, 72), seed=7)
    shutil.copy(known / "0003.png", queries / "copy-of-known.png")
    images = [str(p) for p in sorted(queries.rglob("*.*"))]
    env = {"ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_PRECISION": "fp32", "ZSTAGGER_CACHE_DIR": str(tmp_path / "cache")}

    out = tmp_path / "deploy" / "shop-plus.yaml"
    embedded = run_cli("examples", "embed", "-t", str(source / "tax.yaml"), "-o", str(out), env=env)
    assert embedded.returncode == 0, embedded.stderr
    shutil.rmtree(source)  # from now on nothing can read the example or known image files
    producer = {**env, "ZSTAGGER_TAXONOMY_PATH": str(out.parent)}
    direct = run_cli("tag", *images, "-t", "shop-plus", "--format", "jsonl", env=producer)
    assert direct.returncode == 0, direct.stderr
    in_process = [json.loads(line) for line in direct.stdout.splitlines()]
    copy = next(r for r in in_process if r["image"].endswith("copy-of-known.png"))
    assert copy["matches"][0]["image"] == "known/0003.png" and copy["verdict"] == "block"  # the copy of a known image
    assert sum("matches" in r for r in in_process) == 1

    other_model = make_tiny_checkpoint(tmp_path / "other-model", seed=1)
    redis_server = RedisServer(tmp_path).start()
    workers = []
    try:
        queue_env = {"ZSTAGGER_REDIS_URL": redis_server.url, "ZSTAGGER_PRECISION": "fp32", "ZSTAGGER_METRICS_PORT": "0",
                     "ZSTAGGER_CACHE_DIR": str(tmp_path / "worker-cache")}
        workers = [Worker("same", {**queue_env, "ZSTAGGER_MODEL": str(tiny_model_dir)}, tmp_path, args=("--queues", "bulk")),
                   Worker("other", {**queue_env, "ZSTAGGER_MODEL": str(other_model)}, tmp_path, args=("--queues", "other"))]
        for worker in workers:
            worker.wait_ready()
        job = run_cli("enqueue", *images, "-t", "shop-plus", env={**producer, **queue_env})
        assert job.returncode == 0, job.stderr
        got = run_cli("results", job.stdout.strip(), "--wait", "--timeout", "120", env=queue_env)
        assert got.returncode == 0, got.stderr + workers[0].output()[-3000:]
        queued = [json.loads(line) for line in got.stdout.splitlines()]
        assert [q["image"] for q in queued] == [d["image"] for d in in_process]
        for q, d in zip(queued, in_process):
            assert q["tags"] == d["tags"] and q["verdict"] == d["verdict"] and q.get("matches") == d.get("matches")
            assert [s["label"] for s in q["scores"]] == [s["label"] for s in d["scores"]]
            np.testing.assert_allclose([s["score"] for s in q["scores"]], [s["score"] for s in d["scores"]], atol=1e-6)
        vectors = yaml.safe_load(out.read_text())["image_vectors"]
        (sha,) = [v["sha256"] for v in vectors.values()]
        assert redis_server.client().exists(f"zstagger:vectors:{sha}")  # the pack travelled once, by hash

        # A worker with another model has no vectors for it and cannot read the files: it says so, per input.
        job = run_cli("enqueue", *images[:2], "-t", "shop-plus", "--queue", "other", env={**producer, **queue_env})
        got = run_cli("results", job.stdout.strip(), "--wait", "--timeout", "120", env=queue_env)
        assert got.returncode == 1, got.stderr
        for line in got.stdout.splitlines():
            error = json.loads(line)["error"]
            assert error["type"] == "examples_unavailable" and "taxonomy 'shop-plus'" in error["message"]
            assert "not for this model" in error["message"] and "zstagger examples embed -t shop-plus" in error["message"]
    finally:
        for worker in workers:
            worker.terminate(timeout=20)
        redis_server.stop()


# -- bad input: one line, exit 2, no traceback --------------------------------------------------------


@pytest.fixture
def cli_env(tiny_model_dir, tmp_path):
    return {"ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_PRECISION": "fp32", "ZSTAGGER_CACHE_DIR": str(tmp_path / "cache")}


def bad_taxonomy(kind, root):
    write_labelled_folders(root / "ex", ["alpha", "bravo"], 3, size=(48, 36))
    labels = [{"name": "alpha", "examples": ["ex/alpha/"]}, {"name": "bravo", "examples": ["ex/bravo/"]}]
    if kind == "unreadable":
        (root / "ex" / "alpha" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    elif kind == "all_unreadable":
        labels[1]["examples"] = ["ex/bravo/0000.jpg", "ex/missing.jpg"]
        (root / "ex" / "bravo" / "0000.jpg").write_bytes(b"GIF89a broken")
    elif kind == "empty_directory":
        (root / "ex" / "empty").mkdir()
        (root / "ex" / "empty" / "notes.txt").write_text("no images here")
        labels[1]["examples"] = ["ex/empty"]
    (root / "tax").mkdir()
    (root / "tax" / "bad.yaml").write_text(yaml.safe_dump({"name": "bad", "examples_root": "..", "labels": labels}))
    return root / "tax"


@pytest.mark.parametrize("kind,message", [
    ("unreadable", "taxonomy 'bad': label 'alpha': 1 of its 4 examples cannot be read (ex/alpha/broken.jpg: invalid_image: "),
    ("all_unreadable", "taxonomy 'bad': label 'bravo': none of its 2 examples can be read (ex/bravo/0000.jpg: invalid_image: "),
    ("empty_directory", "taxonomy 'bad': label 'bravo': examples directory ex/empty ("),
])
@pytest.mark.parametrize("command", ["tag", "embed"])
def test_unusable_examples_are_one_line_and_exit_2(kind, message, command, tmp_path, cli_env):
    tax_dir = bad_taxonomy(kind, tmp_path)
    image = tmp_path / "q.jpg"
    labelled_image([0], seed=1).save(image)
    args = (["tag", str(image), "-t", "bad"] if command == "tag"
            else ["examples", "embed", "-t", str(tax_dir / "bad.yaml"), "-o", str(tmp_path / "o.yaml")])
    result = run_cli(*args, env={**cli_env, "ZSTAGGER_TAXONOMY_PATH": str(tax_dir)})
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
    if kind == "empty_directory":
        assert "has no images" in result.stderr
    if command == "tag":
        assert "zstagger examples embed -t bad" in result.stderr  # and what to do where files cannot be read


def test_a_known_image_list_built_for_another_model_is_refused_in_one_line(tmp_path, cli_env, tiny_model_dir):
    from zstagger.testing import make_tiny_checkpoint

    source = tmp_path / "source"
    write_labelled_folders(source / "known", ["alpha"], 3, size=(48, 36))
    (source / "list.yaml").write_text(yaml.safe_dump({"name": "list", "mode": "multi", "labels": [
        {"name": "banned", "known_images": ["known/alpha/"], "match_threshold": 0.95, "action": "block"}]}))
    out = tmp_path / "tax" / "list.yaml"
    assert run_cli("examples", "embed", "-t", str(source / "list.yaml"), "-o", str(out), env=cli_env).returncode == 0
    shutil.rmtree(source)
    other = make_tiny_checkpoint(tmp_path / "other", seed=3)
    image = tmp_path / "q.jpg"
    labelled_image([0], seed=1).save(image)
    result = run_cli("tag", str(image), "-t", "list", env={**cli_env, "ZSTAGGER_MODEL": str(other),
                                                           "ZSTAGGER_TAXONOMY_PATH": str(out.parent)})
    assert result.returncode == 2 and "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "label 'banned': its one known image cannot be read (known/alpha/: not_found: " in result.stderr
    assert f"carries image vectors for {tiny_model_dir}" in result.stderr and "not for this model" in result.stderr
    # with the model it was built for, the same file tags without the images
    ok = run_cli("tag", str(image), "-t", "list", env={**cli_env, "ZSTAGGER_TAXONOMY_PATH": str(out.parent)})
    assert ok.returncode == 0, ok.stderr


# -- learning from a labelled dataset ---------------------------------------------------------------


def test_calibrate_with_examples_writes_them_and_reports_held_out_gains(tmp_path, cli_env):
    data = write_labelled_folders(tmp_path / "labelled", CLASSES, 15, size=(96, 72))
    tax = tmp_path / "tax"
    tax.mkdir()
    (tax / "four.yaml").write_text(yaml.safe_dump({"name": "four", "labels": [{"name": c} for c in CLASSES]}))
    env = {**cli_env, "ZSTAGGER_TAXONOMY_PATH": str(tax)}
    out = tmp_path / "out" / "four-calibrated.yaml"
    result = run_cli("calibrate", str(data), "-t", "four", "--objective", "f1", "--examples", "4", "--json", "-o", str(out),
                     env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    comparison = report["examples"]
    assert comparison["metric"] == "top-1 accuracy" and comparison["labels"] == dict.fromkeys(CLASSES, 4)
    assert comparison["with_examples"]["value"] > comparison["without_examples"]["value"] + 0.3, comparison
    assert len(comparison["labels_without_examples"]) == len(CLASSES)
    written = yaml.safe_load(out.read_text())
    for label in written["labels"]:
        assert len(label["examples"]) == 4 and all(f"/labelled/{label['name']}/" in ref for ref in label["examples"])
    assert len(written["image_vectors"]) == 1  # self-contained for the model it was calibrated with
    # every threshold was chosen on images that are not examples: 15 per class, 4 taken, 11 left
    assert {r["positives"] for r in report["labels"]} == {11}

    again = run_cli("eval", str(data), "-t", "four-calibrated", env={**env, "ZSTAGGER_TAXONOMY_PATH": str(out.parent)})
    assert again.returncode == 0, again.stderr
    assert "labels with images (blend, weight 0.5; vectors from embedded vectors): alpha 4 examples" in again.stdout


def test_each_folds_examples_are_drawn_from_that_folds_training_images_only(tmp_path, tiny_model_dir):
    """Held-out figures with examples are honest only if no fold learns from the images it is judged on."""
    from sklearn.model_selection import KFold

    import zstagger
    from zstagger.evaluation.datasets import load_dataset

    data = write_labelled_folders(tmp_path / "labelled", CLASSES, 6, size=(64, 48))
    taxonomy = Taxonomy(name="four", labels=[{"name": c} for c in CLASSES])
    compiled = []

    class RecordingTagger(Tagger):  # the real tagger; it also notes every taxonomy it compiles
        def classifier(self, taxonomy):
            compiled.append(taxonomy)
            return super().classifier(taxonomy)

    folds = 3
    with RecordingTagger(str(tiny_model_dir), precision="fp32", image_cache=False) as tagger:
        report = zstagger.calibrate(data, taxonomy, objective="f1", examples=2, folds=folds, tagger=tagger, cache=False)
    assert report.examples is not None
    row_of = {item.ref: row for row, item in enumerate(load_dataset(data, taxonomy).items)}
    learnt = [t for t in compiled if any(label.examples for label in t.labels)]
    # the final taxonomy's examples (picked from every image) first, then one per fold, in fold order
    assert len(learnt) == folds + 1
    splits = list(KFold(n_splits=folds, shuffle=True, random_state=0).split(np.arange(len(row_of))))
    for (train, test), fold_taxonomy in zip(splits, learnt[1:]):
        picked = {row_of[ref] for label in fold_taxonomy.labels for ref in label.examples}
        assert len(picked) == 2 * len(CLASSES)
        assert not picked & set(test.tolist()), "a fold learnt from its own held-out images"
        assert picked <= set(train.tolist())


def test_the_examples_cli_shows_what_a_taxonomy_carries(tmp_path, cli_env):
    write_labelled_folders(tmp_path / "ex", ["alpha"], 2, none=2, size=(48, 36))
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({"name": "t", "mode": "multi", "few_shot": {"method": "cache", "alpha": 2},
                                                     "labels": [{"name": "alpha", "examples": ["ex/alpha"], "negatives": ["x"]},
                                                                {"name": "none", "background": True, "examples": ["ex/_none"]}]}))
    shown = run_cli("examples", "show", "-t", str(tmp_path / "t.yaml"), "--json", env=cli_env)
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["labels"][0]["examples"] == 2 and info["image_vectors"] == {}  # images in the directory
    assert info["few_shot"] == {"method": "cache", "alpha": 2.0, "beta": 5.5}


def test_examples_are_embedded_once_then_compiled_from_the_image_cache_without_the_model(data, tiny_model_dir, tmp_path):
    spec = spec_file(data, {"name": "cached", "labels": [{"name": c, "examples": examples_of(c)} for c in CLASSES]})
    script = ("import sys; from zstagger import Tagger, Taxonomy; from zstagger.settings import Settings\n"
              "t = Tagger(sys.argv[1], precision='fp32', image_cache=True, settings=Settings(cache_dir=sys.argv[2]))\n"
              "c = t.classifier(Taxonomy.from_file(sys.argv[3]))\n"
              "print(t.model_loaded, 'torch' in sys.modules, c.images_from, sorted(c.image_counts.items()))")
    runs = [subprocess.run([sys.executable, "-c", script, str(tiny_model_dir), str(tmp_path / "cache"), str(data / "cached.yaml")],
                           capture_output=True, text=True, timeout=120, check=True).stdout.strip() for _ in range(2)]
    counts = "[('alpha', {'examples': 4}), ('bravo', {'examples': 4}), ('charlie', {'examples': 4}), ('delta', {'examples': 4})]"
    assert runs[0] == f"True True image files {counts}"  # the first compile embeds the 16 examples
    assert runs[1] == f"False False image files {counts}"  # the second reads them from the cache: no model, no torch
    from zstagger.embedding_cache import SQLiteImageCache

    assert SQLiteImageCache(tmp_path / "cache" / "image-embeddings.sqlite3").count() == 16
    assert spec.has_images
