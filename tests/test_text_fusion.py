"""Product text as a second signal: an input's title / description embedded by the model's text
tower, scored against the same label prompts as its image and fused with it as the taxonomy's
``text_fusion`` says. Checked against an independent numpy computation from the model's raw
embeddings; inputs without text score bit for bit as before; untrusted text is bounded.
"""

import json

import numpy as np
import pytest
import yaml

from harness import run_cli
from zstagger import ImageWithText, Taxonomy
from zstagger.errors import TaxonomyError
from zstagger.settings import Settings
from zstagger.tagger import Tagger
from zstagger.testing import sample_image

TEMPLATES = ["a photo of {}.", "a product photo of {}."]
TITLES = ["red cotton summer dress", "stainless steel chef knife", "wireless headphones"]


def spec(mode="single", fusion=None, name="shop"):
    data = {"name": name, "mode": mode, "templates": TEMPLATES,
            "labels": [{"name": "dress"}, {"name": "knife", "text": "kitchen knife"}, {"name": "headphones"}]}
    if mode == "multi":
        data["negatives"] = ["something else", "an empty background"]
    if fusion is not None:
        data["text_fusion"] = fusion
    return Taxonomy.parse(data)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("fusion-images")
    paths = []
    for i in range(3):
        sample_image(40 + i, (72, 56)).save(root / f"item{i}.png")
        paths.append(str(root / f"item{i}.png"))
    return paths


@pytest.fixture(scope="module")
def tagger(tiny_model_dir, tmp_path_factory):
    settings = Settings(cache_dir=str(tmp_path_factory.mktemp("cache")))
    with Tagger(str(tiny_model_dir), device="cpu", precision="fp32", settings=settings) as tagger:
        yield tagger


# -- the independent computation: numpy on the model's raw embeddings -------------------------------


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def raw_text(tagger, texts):
    return unit(np.asarray(tagger.encoder.encode_text(list(texts))))


def raw_image(tagger, path):
    pixels = tagger.preprocess([path])[0]
    return unit(np.asarray(tagger.encoder.encode_images(pixels[None]))[0])


def prototype(tagger, phrase):
    """open_clip's zero-shot classifier for one phrase: each template's embedding normalised, averaged, normalised."""
    return unit(raw_text(tagger, [t.format(phrase) for t in TEMPLATES]).mean(axis=0))


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def reference(tagger, mode, path, title, method, weight):
    """Each label's score, computed here from scratch."""
    scale = tagger.model_info().logit_scale
    labels = np.stack([prototype(tagger, p) for p in ("dress", "kitchen knife", "headphones")])
    image, text = raw_image(tagger, path), raw_text(tagger, [title])[0]
    image_logits, text_logits = scale * labels @ image, scale * labels @ text
    if mode == "single":
        rule = softmax
        if method == "logit_mean":
            return rule((1 - weight) * image_logits + weight * text_logits)
        return (1 - weight) * rule(image_logits) + weight * rule(text_logits)
    rivals = np.stack([prototype(tagger, p) for p in ("something else", "an empty background")])

    def contrastive(label_logits, rival_logits):  # each label against the logsumexp of its rivals
        return sigmoid(label_logits - np.log(np.exp(rival_logits).sum()))

    image_rivals, text_rivals = scale * rivals @ image, scale * rivals @ text
    if method == "logit_mean":
        return contrastive((1 - weight) * image_logits + weight * text_logits, (1 - weight) * image_rivals + weight * text_rivals)
    return (1 - weight) * contrastive(image_logits, image_rivals) + weight * contrastive(text_logits, text_rivals)


@pytest.mark.parametrize("mode, method, weight", [
    ("single", "logit_mean", 0.3), ("single", "prob_mean", 0.5), ("multi", "logit_mean", 0.4), ("multi", "prob_mean", 0.25),
])
def test_fusion_matches_an_independent_numpy_computation(tagger, images, mode, method, weight):
    taxonomy = spec(mode, {"method": method, "weight": weight})
    inputs = [ImageWithText(path, title) for path, title in zip(images, TITLES)]
    results = tagger.tag(inputs, taxonomy)
    image_only = tagger.tag(images, taxonomy)
    for result, alone, path, title in zip(results, image_only, images, TITLES):
        assert result.text_used is True and alone.text_used is None
        want = reference(tagger, mode, path, title, method, weight)
        got = {s.label: s.score for s in result.scores}
        assert [got[name] for name in ("dress", "knife", "headphones")] == pytest.approx(want, abs=1e-5)
        # the text moved the scores (this is not the image alone), and cosines stay the image's
        assert max(abs(got[s.label] - s.score) for s in alone.scores) > 1e-4
        assert [s.cosine for s in result.scores] == [dict((x.label, x.cosine) for x in alone.scores)[s.label]
                                                     for s in result.scores]
        assert json.loads(result.to_json())["text_used"] is True


def test_without_text_results_are_bit_for_bit_what_they_were(tagger, images):
    plain, fused = spec("multi"), spec("multi", {"method": "logit_mean", "weight": 0.5})
    before = tagger.tag(images, plain)
    for taxonomy in (plain, fused):
        again = tagger.tag(images, taxonomy)
        for a, b in zip(before, again):
            assert a.scores == b.scores and a.tags == b.tags and a.explanation == b.explanation
            assert "text_used" not in json.loads(b.to_json())
    # Text given, but the taxonomy does not use it: the image's scores, and the result says so.
    ignored = tagger.tag([ImageWithText(p, t) for p, t in zip(images, TITLES)], plain)
    assert [r.scores for r in ignored] == [r.scores for r in before]
    assert all(r.text_used is False for r in ignored)


def test_each_distinct_text_is_embedded_once(tagger, images, monkeypatch):
    taxonomy = spec("single", {"method": "logit_mean", "weight": 0.3})
    tagger.classifier(taxonomy)  # the label prompts: compiled before counting
    seen = []
    encode = tagger.encoder.encode_text
    monkeypatch.setattr(tagger.encoder, "encode_text", lambda texts, *a, **k: seen.extend(texts) or encode(texts, *a, **k))
    titles = ["blue denim jacket", "leather boots", "blue denim jacket"]
    first = tagger.tag([ImageWithText(p, t) for p, t in zip(images, titles)], taxonomy)
    assert sorted(seen) == ["blue denim jacket", "leather boots"]
    tagger.tag([ImageWithText(images[0], "leather boots")], taxonomy)
    assert len(seen) == 2  # kept for the run, by hash
    assert first[0].scores != first[1].scores


def test_an_overlong_text_is_that_inputs_error_record(tiny_model_dir, images, monkeypatch):
    settings = Settings(max_text_chars=40)
    with Tagger(str(tiny_model_dir), device="cpu", precision="fp32", settings=settings) as tagger:
        read = []
        preprocess = tagger.encoder.preprocess
        monkeypatch.setattr(tagger.encoder, "preprocess", lambda image, *a, **k: read.append(1) or preprocess(image, *a, **k))
        results = tagger.tag([ImageWithText(images[0], "x" * 41), ImageWithText(images[1], "short title"), images[2]],
                             spec("single", {"method": "prob_mean", "weight": 0.3}))
    assert results[0].error.type == "text_too_long" and "41 characters" in results[0].error.message
    assert "ZSTAGGER_MAX_TEXT_CHARS" in results[0].error.message and "\n" not in results[0].error.message
    assert results[1].ok and results[1].text_used and results[2].ok and results[2].text_used is None
    assert len(read) == 2  # the over-long one's image was never read


def test_text_fusion_is_validated_with_the_taxonomy():
    for bad, words in [({"method": "max"}, "method"), ({"weight": 1.5}, "weight"), ({"wieght": 0.2}, "wieght")]:
        with pytest.raises(TaxonomyError, match=words):
            spec(fusion=bad)
    assert spec(fusion={}).text_fusion.method == "logit_mean" and spec(fusion={}).text_fusion.weight == 0.3
    assert spec().fingerprint == spec().fingerprint and "text_fusion" not in spec().spec_dict()


# -- the CLI: item lists --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def taxonomy_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("fusion-taxonomies")
    (root / "shop.yaml").write_text(yaml.safe_dump(spec("multi", {"method": "logit_mean", "weight": 0.4}).spec_dict()))
    return root


def test_cli_reads_items_with_text_and_bounds_them(tiny_model_dir, images, taxonomy_dir, tagger, tmp_path):
    listing = tmp_path / "items.jsonl"
    folder = images[0].rsplit("/", 1)[0]
    rows = [{"image": images[0], "text": TITLES[0]}, {"image": images[1]}, {"image": images[2], "text": "y" * 101}]
    listing.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    env = {"ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_PRECISION": "fp32", "ZSTAGGER_TAXONOMY_PATH": str(taxonomy_dir),
           "ZSTAGGER_MAX_TEXT_CHARS": "100"}
    done = run_cli("tag", str(listing), "-t", "shop", "--format", "jsonl", env=env)
    assert done.returncode == 1, done.stderr  # one input failed
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["image"] for line in lines] == images
    assert lines[0]["text_used"] is True and "text_used" not in lines[1]
    assert lines[2]["error"]["type"] == "text_too_long"
    shop = Taxonomy.parse(yaml.safe_load((taxonomy_dir / "shop.yaml").read_text()))
    want = tagger.tag([ImageWithText(images[0], TITLES[0]), images[1]], shop)
    for line, result in zip(lines, want):  # another batch's makeup: the last digits may move
        assert [s["label"] for s in line["scores"]] == [s.label for s in result.scores]
        assert [s["score"] for s in line["scores"]] == pytest.approx([s.score for s in result.scores], abs=1e-5)

    # stdin with --jsonl (paths relative to the current directory), and relative paths in a list file
    relative = tmp_path / "relative.jsonl"
    relative.write_text(json.dumps({"image": "item1.png", "text": TITLES[1]}) + "\n")
    (tmp_path / "item1.png").write_bytes(open(images[1], "rb").read())
    from_file = run_cli("tag", str(relative), "-t", "shop", "--format", "jsonl", env=env)
    assert from_file.returncode == 0, from_file.stderr
    assert json.loads(from_file.stdout)["image"] == str(tmp_path / "item1.png")
    import subprocess

    from harness import clean_environ

    piped = subprocess.run(["zstagger", "tag", "-", "--jsonl", "-t", "shop", "--format", "jsonl"], cwd=folder,
                           input=json.dumps({"image": "item1.png", "text": TITLES[1]}), capture_output=True, text=True,
                           env=clean_environ(env), timeout=300)
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["scores"] == json.loads(from_file.stdout)["scores"]


@pytest.mark.parametrize("line, words", [
    ("not json", "line 1: not JSON"),
    ('{"image": "a.jpg", "text": 5}', '"text" must be a string'),
    ('{"image": "a.jpg", "title": "x"}', "unknown field 'title'"),
    ('["a.jpg"]', "expected an object"),
])
def test_cli_refuses_a_malformed_item_list_before_loading_the_model(tmp_path, line, words):
    listing = tmp_path / "bad.jsonl"
    listing.write_text(line + "\n")
    done = run_cli("tag", str(listing), "-t", "ecommerce", env={"ZSTAGGER_MODEL": "/nonexistent"})
    assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr
    assert "bad.jsonl line 1" in done.stderr


# -- the queue and the HTTP API ------------------------------------------------------------------------


def test_queued_items_carry_their_text_to_the_worker(redis_server, tiny_model_dir, images, taxonomy_dir, tagger, tmp_path):
    from harness import worker_starter
    from zstagger import ConfigurationError
    from zstagger.queue import enqueue

    env = {"ZSTAGGER_REDIS_URL": redis_server.url, "ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_PRECISION": "fp32",
           "ZSTAGGER_TAXONOMY_PATH": str(taxonomy_dir)}
    settings = Settings(redis_url=redis_server.url, max_text_chars=100)
    shop = Taxonomy.parse(yaml.safe_load((taxonomy_dir / "shop.yaml").read_text()))
    inputs = [ImageWithText(images[0], TITLES[0]), images[1], ImageWithText(images[2], TITLES[2])]
    with pytest.raises(ConfigurationError, match="input 1: the input's text is 101 characters"):
        enqueue([images[0], ImageWithText(images[1], "z" * 101)], shop, settings=settings)
    with worker_starter(env, tmp_path) as start:
        start("text").wait_ready()
        queued = enqueue(inputs, shop, settings=settings).results(wait=True, timeout=120)
        both = enqueue(inputs, taxonomies=[shop, "moderation"], settings=settings).results(wait=True, timeout=120)
    local = tagger.tag(inputs, shop)
    assert [r.text_used for r in queued] == [True, None, True]
    for q, m, d in zip(queued, both, local):
        assert m["shop"] == q and m["moderation"].text_used in (None, False)
        assert q.tags == d.tags and [s.label for s in q.scores] == [s.label for s in d.scores]
        assert [s.score for s in q.scores] == pytest.approx([s.score for s in d.scores], abs=1e-5)


def test_http_images_may_bring_text(tiny_model_dir, images, taxonomy_dir, tagger, tmp_path):
    import base64

    import httpx

    from harness import ApiServer
    from zstagger.service.auth import hash_key

    env = {"ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_PRECISION": "fp32", "ZSTAGGER_API_KEYS": hash_key("zst_text-key"),
           "ZSTAGGER_TAXONOMY_PATH": str(taxonomy_dir), "ZSTAGGER_MAX_TEXT_CHARS": "100", "ZSTAGGER_BATCH_WAIT_MS": "5"}
    api = ApiServer(env, tmp_path).wait_ready()
    try:
        body = {"taxonomy": "shop", "images": [
            {"base64": base64.b64encode(open(images[0], "rb").read()).decode(), "name": "one.png", "text": TITLES[0]},
            {"base64": base64.b64encode(open(images[1], "rb").read()).decode(), "name": "two.png", "text": "w" * 101}]}
        response = httpx.post(api.url + "/v1/tag", json=body, headers={"Authorization": "Bearer zst_text-key"}, timeout=60)
        assert response.status_code == 200, response.text
        first, second = response.json()["results"]
        assert first["text_used"] is True and first["image"] == "one.png"
        assert second["error"]["type"] == "text_too_long" and second["image"] == "two.png"
        shop = Taxonomy.parse(yaml.safe_load((taxonomy_dir / "shop.yaml").read_text()))
        want = tagger.tag([ImageWithText(images[0], TITLES[0])], shop)[0]
        assert [s["score"] for s in first["scores"]] == pytest.approx([s.score for s in want.scores], abs=1e-5)

        # Multipart: a text field is the text of the file just before it.
        def part(i, name):
            return ("images", (name, open(images[i], "rb").read(), "image/png"))

        headers = {"Authorization": "Bearer zst_text-key"}
        form = [part(0, "one.png"), ("text", (None, TITLES[0])), part(1, "plain.png"), part(2, "three.png"),
                ("text", (None, TITLES[2])), ("taxonomy", (None, "shop"))]
        response = httpx.post(api.url + "/v1/tag", files=form, headers=headers, timeout=60)
        assert response.status_code == 200, response.text
        got = response.json()["results"]
        assert [r.get("text_used") for r in got] == [True, None, True], got
        wants = tagger.tag([ImageWithText(images[0], TITLES[0]), images[1], ImageWithText(images[2], TITLES[2])], shop)
        for one, want in zip(got, wants):
            assert [s["score"] for s in one["scores"]] == pytest.approx([s.score for s in want.scores], abs=1e-5)
        for bad, said in [([("text", (None, "a title")), part(0, "one.png")], "comes after the file"),
                          ([part(0, "one.png"), ("text", (None, "a")), ("text", (None, "b"))], "two text fields")]:
            refused = httpx.post(api.url + "/v1/tag", files=bad + [("taxonomy", (None, "shop"))], headers=headers, timeout=60)
            assert refused.status_code == 400 and said in refused.json()["error"]["message"], refused.text
    finally:
        assert api.stop() in (0, -15)
    assert "Traceback" not in api.log_path.read_text()


# -- eval: image-only against image+text on the same set ----------------------------------------------


def test_eval_reports_image_only_and_image_plus_text_rows(tiny_model_dir, tagger, tmp_path, taxonomy_dir):
    from zstagger.evaluation import evaluate
    from zstagger.synthetic import labelled_image

    names = ["dress", "knife", "headphones"]
    rows = []
    (tmp_path / "images").mkdir()
    for i in range(12):
        label = names[i % 3]
        labelled_image([i % 3], seed=500 + i, size=(64, 48)).save(tmp_path / "images" / f"{i}.png")
        row = {"image": f"images/{i}.png", "labels": [label]}
        if i % 4:  # a quarter of the rows bring no text: they are scored from the image alone in both rows
            row["text"] = f"{['summer', 'sharp', 'noise cancelling'][i % 3]} {label} {i}"
        rows.append(row)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    fused = spec("single", {"method": "logit_mean", "weight": 0.6})
    report = evaluate(manifest, fused, tagger=tagger, bootstrap_rounds=20)
    image_row, text_row = report.signals
    assert (image_row.signal, image_row.images_with_text) == ("image", 0)
    assert (text_row.signal, text_row.images_with_text, text_row.text_fusion) == ("image+text", 9, "logit_mean, weight 0.6")
    assert image_row.top1 == report.levels[0].top1 and text_row.top1 == report.with_text.levels[0].top1

    # Each row equals what tagging gives, independently: the top label of each image against its truth.
    def top1(inputs):
        return sum(r.scores[0].label == row["labels"][0] for r, row in zip(tagger.tag(inputs, fused), rows)) / len(rows)

    paths = [str(tmp_path / row["image"]) for row in rows]
    assert image_row.top1.value == pytest.approx(top1(paths))
    assert text_row.top1.value == pytest.approx(
        top1([ImageWithText(p, row["text"]) if "text" in row else p for p, row in zip(paths, rows)]))
    assert image_row.top1.value != text_row.top1.value  # the text moved the ranking (weight 0.6)

    # A taxonomy without text_fusion is compared with the default fusion; without text there is no comparison.
    plain = evaluate(manifest, spec("single"), tagger=tagger, bootstrap_rounds=20)
    assert plain.signals[1].text_fusion == "logit_mean, weight 0.3" and plain.signals[0].top1 == report.signals[0].top1
    (tmp_path / "plain.jsonl").write_text("\n".join(json.dumps({k: v for k, v in r.items() if k != "text"}) for r in rows))
    assert evaluate(tmp_path / "plain.jsonl", fused, tagger=tagger, bootstrap_rounds=20).signals is None

    env = {"ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_PRECISION": "fp32", "ZSTAGGER_TAXONOMY_PATH": str(taxonomy_dir)}
    (tmp_path / "multi.jsonl").write_text("\n".join(json.dumps({**r, "labels": [r["labels"][0]]}) for r in rows))
    done = run_cli("eval", str(tmp_path / "multi.jsonl"), "-t", "shop", "--bootstrap", "10", env=env)
    assert done.returncode == 0, done.stderr
    assert "image only against image+text" in done.stdout
    table = done.stdout.split("image only against image+text", 1)[1].splitlines()
    assert table[1].split()[:2] == ["SIGNAL", "WITH"] and table[2].startswith("image ") and table[3].startswith("image+text")


def test_calibrate_chooses_thresholds_on_the_scores_with_text_fused(tiny_model_dir, tagger, tmp_path):
    from zstagger.evaluation import calibrate
    from zstagger.evaluation.calibrate import Target, choose_threshold
    from zstagger.synthetic import labelled_image

    names = ["dress", "knife", "headphones"]
    rows = []
    (tmp_path / "images").mkdir()
    for i in range(24):
        truth = [names[i % 3]] + ([names[(i + 1) % 3]] if i % 5 == 0 else [])
        labelled_image([names.index(n) for n in truth], seed=700 + i, size=(64, 48)).save(tmp_path / "images" / f"{i}.png")
        row = {"image": f"images/{i}.png", "labels": truth}
        if i % 4:  # some rows bring no text: scored from the image alone
            row["text"] = f"{['summer', 'sharp', 'noise cancelling'][i % 3]} {truth[0]} {i}"
        rows.append(row)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    fused = spec("multi", {"method": "logit_mean", "weight": 0.6})
    target = Target("recall", 0.8)  # reachable whatever a random model scores
    report = calibrate(manifest, fused, target_recall=0.8, folds=3, min_positives=3, tagger=tagger, bootstrap_rounds=20)
    assert report.text.images_with_text == 18 and report.text.text_fusion == "logit_mean, weight 0.6"
    assert report.taxonomy.text_fusion == fused.text_fusion  # tagging with it fuses as calibrated

    # Each threshold is chosen among the scores tagging gives these inputs, text fused, independently.
    paths = [str(tmp_path / row["image"]) for row in rows]
    results = tagger.tag([ImageWithText(p, row["text"]) if "text" in row else p for p, row in zip(paths, rows)], fused)
    image_only = calibrate(manifest, spec("multi"), target_recall=0.8, folds=3, min_positives=3, tagger=tagger,
                           bootstrap_rounds=20)
    assert image_only.text is not None  # (the default fusion: a manifest's text is always used)
    differs = 0
    for chosen in report.labels:
        assert chosen.status == "calibrated", chosen
        score = np.array([next(s.score for s in r.scores if s.label == chosen.label) for r in results])
        truth = np.array([chosen.label in row["labels"] for row in rows])
        assert chosen.threshold == pytest.approx(choose_threshold(score, truth, target), abs=1e-5)
        other = next(r for r in image_only.labels if r.label == chosen.label)
        differs += abs(other.threshold - chosen.threshold) > 1e-4
    assert differs  # the weight moved at least one threshold


def test_eval_and_calibrate_with_text_take_animations_too_judged_from_their_frames_alone(tagger, tmp_path):
    from zstagger.evaluation import calibrate, evaluate
    from zstagger.synthetic import labelled_image

    names = ["dress", "knife", "headphones"]
    rows = []
    (tmp_path / "images").mkdir()
    for i in range(18):
        label = names[i % 3]
        if i % 6 == 5:  # an animation of its class, with a text (its frames are judged without it)
            frames = [labelled_image([i % 3], seed=900 + i * 10 + k, size=(64, 48)) for k in range(3)]
            frames[0].save(tmp_path / "images" / f"{i}.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
            rows.append({"image": f"images/{i}.gif", "labels": [label], "text": f"animated {label}"})
            continue
        labelled_image([i % 3], seed=800 + i, size=(64, 48)).save(tmp_path / "images" / f"{i}.png")
        rows.append({"image": f"images/{i}.png", "labels": [label], **({"text": f"a {label}"} if i % 2 else {})})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    fused = spec("multi", {"method": "logit_mean", "weight": 0.6})
    report = evaluate(manifest, fused, tagger=tagger, bootstrap_rounds=10)
    stills_with_text = sum(1 for r in rows if "text" in r and r["image"].endswith(".png"))
    assert report.media.items == 3 and report.signals[1].images_with_text == stills_with_text
    calibrated = calibrate(manifest, fused, target_recall=0.8, folds=3, min_positives=3, tagger=tagger, bootstrap_rounds=10)
    assert calibrated.media.items == 3 and calibrated.text.images_with_text == stills_with_text
    assert all(r.status == "calibrated" for r in calibrated.labels)
