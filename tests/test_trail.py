"""The decision trail (``explanation``) against an independent computation from the embeddings.

The prompt that matched best, the strongest rival and the margin, the threshold's origin,
the text-only score of a taxonomy with example images and the known-image match are
recomputed here with numpy from each prompt's own text embedding and the image embedding
(the real tiny model), and compared with what the Tagger put in the result. The JSON lines
of the fast path (``result_lines``) equal the result objects' JSON; ``explain=False`` leaves
the trail out."""

import json

import numpy as np
import pytest
from PIL import Image

from zstagger import Taxonomy
from zstagger.tagger import Tagger


def norm(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def image(seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((48, 48, 3)) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def tagger(tiny_model_dir):
    with Tagger(str(tiny_model_dir), device="cpu", precision="fp32", batch_size=4, image_cache=False) as t:
        yield t


def texts(tagger, prompts):
    return {p: norm(tagger.encoder.encode_text([p]).numpy()[0]) for p in prompts}


def label_embedding(per_prompt, prompts):
    return norm(np.mean([per_prompt[p] for p in prompts], axis=0))


MULTI = {
    "name": "trail-multi", "version": "7", "mode": "multi", "default_threshold": 0.3,
    "templates": ["a photo of {}.", "a picture of {}."], "negatives": ["an empty room"],
    "labels": [
        {"name": "cat", "synonyms": ["kitten"], "action": "block", "threshold": 0.2},
        {"name": "dog", "action": "review", "negatives": ["a wolf", "a fox"]},
        {"name": "car", "action": "allow"},
        {"name": "nothing", "background": True},
    ],
}


def expected_multi(tagger, spec, x):
    """Every label's score, best prompt, strongest rival and margin, written out from the definitions."""
    templates = spec["templates"]
    per_prompt = {}
    labels = {}
    for label in spec["labels"]:
        prompts = [t.format(text) for text in [label["name"], *label.get("synonyms", [])] for t in templates]
        per_prompt.update(texts(tagger, prompts))
        labels[label["name"]] = prompts
    embed = {name: label_embedding(per_prompt, prompts) for name, prompts in labels.items()}
    scale = tagger.model_info().logit_scale
    out = {}
    for label in spec["labels"]:
        if label.get("background"):
            continue
        phrases = label.get("negatives") or spec["negatives"]
        rivals = {}
        for phrase in phrases:
            prompts = [t.format(phrase) for t in templates]
            rivals[phrase] = ("negative", label_embedding(texts(tagger, prompts), prompts))
        for other in spec["labels"]:
            if other.get("background"):
                rivals[other["name"]] = ("background", embed[other["name"]])
        cos = float(x @ embed[label["name"]])
        rival_cos = {name: float(x @ e) for name, (_, e) in rivals.items()}
        top = max(rival_cos, key=rival_cos.get)
        logits = np.array([scale * c for c in rival_cos.values()])
        score = 1 / (1 + np.exp(-(scale * cos - (np.log(np.exp(logits - logits.max()).sum()) + logits.max()))))
        best_prompt = max(labels[label["name"]], key=lambda p: float(x @ per_prompt[p]))
        out[label["name"]] = dict(score=score, prompt=best_prompt, prompt_cosine=float(x @ per_prompt[best_prompt]),
                                  rival=top, rival_kind=rivals[top][0], rival_cosine=rival_cos[top], margin=cos - rival_cos[top],
                                  threshold=label.get("threshold", spec["default_threshold"]),
                                  threshold_from="label" if "threshold" in label else "default")
    return out


def test_multi_label_trail_equals_an_independent_computation(tagger):
    spec = Taxonomy.parse(MULTI, source="test")
    pictures = [image(seed) for seed in range(6)]
    results = tagger.tag(pictures, spec)
    xs = norm(np.stack(tagger.embed_images(pictures)))
    seen_fired = seen_not_fired = 0
    for result, x in zip(results, xs):
        expected = expected_multi(tagger, MULTI, x)
        trail = {e.label: e for e in result.explanation}
        fired = set(result.tags)
        strongest_other = max((name for name in expected if name not in fired), key=lambda n: expected[n]["score"])
        assert set(trail) == fired | {strongest_other}
        for name, entry in trail.items():
            want = expected[name]
            assert entry.fired == (name in fired)
            assert entry.score == pytest.approx(want["score"], abs=1e-3)  # prompts embedded one by one here: float32 rounding, x100
            assert entry.fired == (want["score"] >= want["threshold"])
            assert (entry.prompt, entry.rival, entry.rival_kind) == (want["prompt"], want["rival"], want["rival_kind"])
            assert entry.prompt_cosine == pytest.approx(want["prompt_cosine"], abs=1e-4)
            assert entry.rival_cosine == pytest.approx(want["rival_cosine"], abs=1e-4)
            assert entry.margin == pytest.approx(want["margin"], abs=1e-4)
            assert (entry.threshold, entry.threshold_from, entry.threshold_source) == (
                want["threshold"], want["threshold_from"], "trail-multi@7")
            assert entry.text_score is None and entry.known_image is None  # no example or known images here
            seen_fired += entry.fired
            seen_not_fired += not entry.fired
    assert seen_fired and seen_not_fired  # both kinds of entry were checked


def test_single_label_trail_names_the_strongest_sibling(tagger):
    spec = {"name": "trail-single", "labels": [{"name": n} for n in ("cat", "dog", "car", "boat")], "default_threshold": 0.0}
    taxonomy = Taxonomy.parse(spec, source="test")
    pictures = [image(seed) for seed in range(10, 14)]
    per_prompt = texts(tagger, [f"This is a photo of {n}." for n in ("cat", "dog", "car", "boat")])
    xs = norm(np.stack(tagger.embed_images(pictures)))
    for result, x in zip(tagger.tag(pictures, taxonomy), xs):
        cos = {n: float(x @ per_prompt[f"This is a photo of {n}."]) for n in ("cat", "dog", "car", "boat")}
        ranked = sorted(cos, key=cos.get, reverse=True)
        assert result.tags == [ranked[0]]
        (won, runner_up) = result.explanation
        assert (won.label, won.fired, won.rival, won.rival_kind) == (ranked[0], True, ranked[1], "label")
        assert won.margin == pytest.approx(cos[ranked[0]] - cos[ranked[1]], abs=1e-4)
        assert (runner_up.label, runner_up.fired, runner_up.rival) == (ranked[1], False, ranked[0])
        assert runner_up.margin == pytest.approx(cos[ranked[1]] - cos[ranked[0]], abs=1e-4)


def test_example_images_show_as_the_text_only_score_and_known_images_as_matches(tagger, tmp_path):
    pictures = [image(seed) for seed in range(20, 26)]
    for i, picture in enumerate(pictures):
        picture.save(tmp_path / f"{i}.png")
    spec = dict(MULTI, name="trail-shots", labels=[
        {"name": "cat", "examples": ["0.png", "1.png"], "threshold": 0.2},
        {"name": "dog", "negatives": ["a wolf"], "examples": ["3.png"]},
        {"name": "logo", "known_images": ["2.png"], "match_threshold": 0.99},
    ], few_shot={"method": "blend", "weight": 0.5})
    (tmp_path / "t.json").write_text(json.dumps(spec))
    taxonomy = Taxonomy.from_file(tmp_path / "t.json")
    text_only = Taxonomy.parse(dict(spec, name="trail-text", labels=[{"name": "cat", "threshold": 0.2},
                                                                    {"name": "dog", "negatives": ["a wolf"]}]), source="test")
    shown = [pictures[0], pictures[2], pictures[4]]
    results = tagger.tag(shown, taxonomy)
    plain = {r.image: {s.label: s.score for s in r.scores} for r in tagger.tag(shown, text_only)}
    moved = False
    for result in results:
        trail = {e.label: e for e in result.explanation}
        for name, entry in trail.items():
            if name in ("cat", "dog"):
                assert entry.text_score == pytest.approx(plain[result.image][name], abs=1e-4)
                moved |= abs(entry.score - entry.text_score) > 1e-3
    assert moved  # the example images moved some score, and the trail shows by how much
    copy = {e.label: e for e in results[1].explanation}["logo"]
    assert "logo" in results[1].tags and copy.fired
    assert (copy.known_image.image, copy.known_image.matched, copy.threshold_from) == ("2.png", True, "match_threshold")
    assert copy.known_image.cosine == pytest.approx(1.0, abs=1e-4) and copy.prompt is None


def test_calibrated_thresholds_name_their_calibration_run(tagger):
    from zstagger.evaluation.calibrate import calibrated_taxonomy  # noqa: F401  (the writer of this block)

    spec = dict(MULTI, labels=[dict(MULTI["labels"][0], threshold=0.25), *MULTI["labels"][1:]], calibration={
        "model": "tiny", "dataset": "reviewed.jsonl", "dataset_fingerprint": "abc", "images": 300, "date": "2026-12-05",
        "target": "precision>=0.9", "folds": 5, "source": "trail-multi@6",
        "labels": {"cat": {"status": "calibrated", "target": "precision>=0.9", "threshold": 0.25,
                           "previous_threshold": 0.2, "positives": 40}},
    })
    result = tagger.tag([image(3)], Taxonomy.parse(spec, source="test"))[0]
    by_label = {e.label: e for e in result.explanation}
    entry = by_label.get("cat")
    if entry is None:  # cat neither fired nor came closest: score it where it does
        result = next(r for r in tagger.tag([image(s) for s in range(40)], Taxonomy.parse(spec, source="test"))
                      if "cat" in {e.label for e in r.explanation})
        entry = {e.label: e for e in result.explanation}["cat"]
    assert entry.threshold == 0.25 and entry.threshold_from == "calibration"
    assert "calibrated from trail-multi@6 on reviewed.jsonl" in entry.threshold_source


def test_fast_path_lines_equal_the_result_objects_and_explain_off_leaves_it_out(tiny_model_dir):
    spec = Taxonomy.parse(MULTI, source="test")
    pictures = [image(seed) for seed in range(30, 35)]
    with Tagger(str(tiny_model_dir), device="cpu", precision="fp32", image_cache=False) as on:
        embeds = np.stack(on.embed_images(pictures))
        names = [f"{i}.png" for i in range(len(pictures))]
        objects = on.results(spec, names, embeds, [None] * len(names))
        lines = on.result_lines(spec, names, embeds)
        assert lines == [r.to_json() for r in objects]
        assert all("explanation" in json.loads(line) for line in lines)
        assert [json.loads(r.model_dump_json()) for r in objects] == [json.loads(line) for line in lines]
    with Tagger(str(tiny_model_dir), device="cpu", precision="fp32", image_cache=False, explain=False) as off:
        quiet = off.results(spec, names, embeds, [None] * len(names))
        assert all(r.explanation is None and "explanation" not in json.loads(r.to_json()) for r in quiet)
        assert all("explanation" not in json.loads(line) for line in off.result_lines(spec, names, embeds))
        assert [r.scores for r in quiet] == [r.scores for r in objects]
