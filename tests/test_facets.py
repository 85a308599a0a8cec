"""Facets (attribute groups beside the labels) and hierarchy descent.

Facets on the real tiny model with few-shot examples, so that values fire on known images;
each facet checked to be exactly the single-label taxonomy it stands for, and against an
independent numpy computation; facets that apply only under some categories; descent that
scores only the branches it enters (counted), with a confidence stop."""

import json

import numpy as np
import pytest
import yaml

from zstagger import Taxonomy
from zstagger.embedder import NO_CACHE
from zstagger.errors import TaxonomyError
from zstagger.results import TagResult
from zstagger.synthetic import write_labelled_folders
from zstagger.tagger import Tagger

CLASSES = ["alpha", "bravo", "charlie", "delta"]
COLOURS = {"alpha": "red", "bravo": "green", "charlie": "blue", "delta": "yellow"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("facets")
    write_labelled_folders(root / "images", CLASSES, 10, size=(96, 72))
    return root


@pytest.fixture(scope="module")
def tagger(tiny_model_dir, tmp_path_factory):
    from zstagger.settings import Settings

    settings = Settings(cache_dir=str(tmp_path_factory.mktemp("cache")))
    with Tagger(str(tiny_model_dir), device="cpu", precision="fp32", batch_size=8, settings=settings) as tagger:
        yield tagger


def examples_of(name, count=4):
    return [f"images/{name}/{i:04d}.jpg" for i in range(count)]


def held_out(data, name):
    return [str(data / "images" / name / f"{i:04d}.jpg") for i in range(4, 10)]


def embed(tagger, images):
    """The images' embeddings as tagging makes them (no image cache, whose fp16 rounding would differ)."""
    return np.concatenate([vectors for _, vectors, _ in tagger.embed_batches(images, route=NO_CACHE)])


def spec_file(directory, spec):
    path = directory / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return Taxonomy.from_file(path)


def shop_spec(**colour):
    return {
        "name": "shop",
        "labels": [
            {"name": "tops", "examples": examples_of("alpha") + examples_of("bravo")},
            {"name": "shoes", "examples": examples_of("charlie") + examples_of("delta")},
        ],
        "facets": [
            {"name": "colour", **colour,
             "values": [{"name": COLOURS[c], "examples": examples_of(c)} for c in CLASSES]},
            {"name": "sleeve", "applies_to": ["tops"],
             "values": [{"name": "short", "examples": examples_of("alpha")},
                        {"name": "long", "examples": examples_of("bravo")}]},
        ],
    }


def test_facet_values_fire_on_images_like_their_examples(data, tagger):
    shop = spec_file(data, shop_spec())
    hits, total = 0, 0
    for name in CLASSES:
        for result in tagger.tag(held_out(data, name), shop):
            total += 1
            hits += result.facets["colour"].value == COLOURS[name]
            category = result.tags[0]
            sleeve = result.facets["sleeve"]
            if category == "tops":  # scored under tops: a value or at least a score
                assert sleeve.score is not None and 0.0 <= sleeve.score <= 1.0
            else:  # not applicable: neither a value nor a score
                assert sleeve.value is None and sleeve.score is None
    assert hits >= 18, (hits, total)  # 24 held-out images, 4 values: chance is 6
    tops = [r for name in ("alpha", "bravo") for r in tagger.tag(held_out(data, name), shop) if r.tags == ["tops"]]
    assert len(tops) >= 5  # half of the 12 alpha and bravo images, at least, are found to be tops
    expected = {"alpha": "short", "bravo": "long"}
    right = sum(r.facets["sleeve"].value == expected[r.image.split("/")[-2]] for r in tops)
    assert right >= 0.75 * len(tops), (right, len(tops))


def test_a_facet_is_exactly_the_single_label_taxonomy_it_stands_for(data, tagger):
    shop = spec_file(data, shop_spec(threshold=0.3))
    alone = spec_file(data, {"name": "colour-alone", "default_threshold": 0.3, "labels": [
        *[{"name": COLOURS[c], "examples": examples_of(c)} for c in CLASSES],
        {"name": "nothing", "text": "nothing of the kind", "background": True}]})
    images = [image for name in CLASSES for image in held_out(data, name)]
    fired = 0
    for faceted, single in zip(tagger.tag(images, shop), tagger.tag(images, alone)):
        scores = {s.label: s.score for s in single.scores}
        best = max((v for v in COLOURS.values()), key=lambda v: scores[v])
        facet = faceted.facets["colour"]
        assert facet.score == pytest.approx(scores[best], abs=1e-12)
        assert facet.value == (single.tags[0] if single.tags else None)
        fired += facet.value is not None
    assert 0 < fired < len(images)  # the threshold leaves some images without a colour, not all


def test_facet_scores_equal_an_independent_computation(data, tagger):
    values = ["red", "green", "blue"]
    templates = ["a photo of a {} thing.", "{} product."]
    spec = Taxonomy(name="plain-facet", templates=["a photo of {}."], labels=[{"name": "thing"}, {"name": "other"}],
                    facets=[{"name": "colour", "values": values, "templates": templates, "none": "no colour at all",
                             "threshold": 0.34}])
    images = [image for name in CLASSES for image in held_out(data, name)]
    results = tagger.tag(images, spec)
    # by hand: each value's prompts embedded, normalised, averaged, normalised; softmax over values + none
    texts = [[t.format(v) for t in templates] for v in [*values, "no colour at all"]]
    rows = []
    for group in texts:
        emb = np.asarray(tagger.encoder.encode_text(group), dtype=np.float64)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        mean = emb.mean(axis=0)
        rows.append(mean / np.linalg.norm(mean))
    prototypes = np.stack(rows)
    vectors = embed(tagger, images).astype(np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    logits = tagger.model_info().logit_scale * vectors @ prototypes.T
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for result, p in zip(results, probs):
        best = int(p[:3].argmax())
        facet = result.facets["colour"]
        assert facet.score == pytest.approx(p[best], abs=1e-5)
        wins = p.argmax() == best and p[best] >= 0.34
        assert facet.value == (values[best] if wins else None)


def test_facets_are_independent_of_each_other_and_of_the_labels(data, tagger):
    full = spec_file(data, shop_spec())
    spec = shop_spec()
    spec["name"], spec["facets"] = "shop-one-facet", spec["facets"][:1]
    one = spec_file(data, spec)
    spec = shop_spec()
    spec["name"] = "shop-no-facets"
    del spec["facets"]
    bare = spec_file(data, spec)
    images = held_out(data, "alpha") + held_out(data, "charlie")
    for a, b, c in zip(tagger.tag(images, full), tagger.tag(images, one), tagger.tag(images, bare)):
        assert a.facets["colour"] == b.facets["colour"]
        assert a.scores == b.scores == c.scores and a.tags == c.tags
        assert c.facets is None and "facets" not in json.loads(c.to_json())


def test_results_with_facets_read_back_and_store_lines_match(data, tagger):
    shop = spec_file(data, shop_spec())
    images = held_out(data, "alpha")[:3] + held_out(data, "delta")[:3]
    results = tagger.tag(images, shop)
    for result in results:
        line = json.loads(result.to_json())
        assert set(line["facets"]) == {"colour", "sleeve"}
        assert TagResult.from_json(result.to_json()) == result
    vectors = embed(tagger, images)
    lines = tagger.result_lines(shop, [r.image for r in results], vectors)
    assert [json.loads(line)["facets"] for line in lines] == [json.loads(r.to_json())["facets"] for r in results]


@pytest.mark.parametrize("facet, message", [
    ({"name": "colour", "values": []}, "facet 'colour': has no values"),
    ({"name": "colour", "values": ["red"], "applies_to": ["hats"]}, "applies_to 'hats' is not a label"),
    ({"name": "colour", "values": ["red", "red"]}, "facet 'colour': value 'red': duplicate"),
    ({"name": "colour", "values": [{"name": "red", "parent": "x"}]}, "value 'red': parent does not apply"),
    ({"name": "colour", "values": ["red"], "threshold": 1.5}, "facet 'colour': threshold 1.5 is outside"),
    ({"name": "colour", "values": ["_none"]}, "reserved"),
])
def test_bad_facets_are_named_in_one_line_each(facet, message):
    with pytest.raises(TaxonomyError) as caught:
        Taxonomy(name="shop", labels=[{"name": "tops"}], facets=[facet])
    assert message in str(caught.value)
    assert all(line.startswith("taxonomy 'shop': facet 'colour'") for line in str(caught.value).splitlines())


# -- descent ----------------------------------------------------------------------------------


def tree(branching=(4, 3, 3), **descent):
    labels, level = [], [None]
    for depth, count in enumerate(branching):
        nxt = []
        for parent in level:
            for i in range(count):
                name = f"{parent}/{i}" if parent else f"c{i}"
                labels.append({"name": name, "text": f"kind {name.replace('/', ' ')}", **({"parent": parent} if parent else {})})
                nxt.append(name)
        level = nxt
    return Taxonomy(name="tree", labels=labels, **({"descent": descent} if descent else {}))


def test_entered_descent_scores_only_the_branches_it_enters_and_agrees_with_full_scoring(data, tagger):
    full, entered = tree(), tree(scoring="entered")
    images = [image for name in CLASSES for image in held_out(data, name)]
    vectors = embed(tagger, images)
    everything, lazy = tagger.classifier(full), tagger.classifier(entered)
    before = lazy.labels_scored
    a, b = everything.classify(vectors), lazy.classify(vectors)
    expected = 0
    for x, y in zip(a, b):
        assert x.tags == y.tags and len(y.tags) == 3
        full_scores = {label: score for label, score, _ in x.scores}
        lazy_scores = {label: score for label, score, _ in y.scores}
        # the groups it entered: the roots, then the children of each label on its path but the last
        entered_labels = [n for n in full_scores if n.count("/") == 0]
        for parent in y.tags[:-1]:
            entered_labels += [n for n in full_scores if n.rsplit("/", 1)[0] == parent and n != parent]
        expected += len(entered_labels)
        for label in full_scores:
            if label in entered_labels:
                assert lazy_scores[label] == pytest.approx(full_scores[label], rel=1e-5)
            else:
                assert lazy_scores[label] == 0.0
    assert lazy.labels_scored - before == expected == len(images) * (4 + 3 + 3)
    assert expected < len(images) * len(full.labels) / 3  # 10 of 48 labels per image


@pytest.mark.parametrize("method", ["logit_mean", "prob_mean"])
def test_entered_descent_fuses_text_as_scoring_every_label_does(data, tagger, method):
    from zstagger.engine.scoring import InputTexts

    fusion = {"method": method, "weight": 0.6}
    full, entered = Taxonomy.parse({**tree().spec_dict(), "text_fusion": fusion}), \
        Taxonomy.parse({**tree(scoring="entered").spec_dict(), "text_fusion": fusion})
    images = [image for name in CLASSES for image in held_out(data, name)][:12]
    vectors = embed(tagger, images)
    titles = [f"kind c{i % 4} {i % 3} {(i // 3) % 3}" for i in range(len(images))]
    rows = np.arange(0, len(images), 2)  # every other image comes with a title
    texts = InputTexts(rows, tagger.text_embeddings([titles[r] for r in rows]))
    everything, lazy = tagger.classifier(full), tagger.classifier(entered)
    a, b = everything.classify(vectors, texts=texts), lazy.classify(vectors, texts=texts)
    alone = lazy.classify(vectors)
    moved = 0
    for row, (x, y, z) in enumerate(zip(a, b, alone)):
        assert x.tags == y.tags
        full_scores = {label: score for label, score, _ in x.scores}
        lazy_scores = {label: score for label, score, _ in y.scores}
        path = [n for n in full_scores if n.count("/") == 0]
        for parent in y.tags[:-1]:
            path += [n for n in full_scores if n.rsplit("/", 1)[0] == parent and n != parent]
        assert [lazy_scores[n] for n in path] == pytest.approx([full_scores[n] for n in path], rel=1e-5)
        if row in rows:
            moved += any(abs(s - t) > 1e-4 for (_, s, _), (_, t, _) in zip(y.scores, z.scores))
        else:
            # no title: the image alone, as before (up to the rounding of a batch of another makeup)
            assert [s for _, s, _ in y.scores] == pytest.approx([s for _, s, _ in z.scores], abs=1e-6)
    assert moved  # the titles changed the scores


def test_the_confidence_stop_ends_descent_at_the_deepest_level_it_is_sure_of(data, tagger):
    images = [image for name in CLASSES for image in held_out(data, name)]
    vectors = embed(tagger, images)
    plain = tagger.classifier(tree(scoring="entered"))
    for stop in (0.3, 0.5):
        stopping = tagger.classifier(tree(scoring="entered", stop=stop))
        batch = plain.score(vectors).scores
        names = plain.names
        shallower = 0
        for row, c in enumerate(stopping.classify(vectors)):
            full_path = plain.classify(vectors[row:row + 1])[0].tags
            assert c.tags == full_path[:len(c.tags)]
            shallower += len(c.tags) < len(full_path)
            for depth, label in enumerate(full_path):
                siblings = [i for i, n in enumerate(names) if n.rsplit("/", 1)[0] == (full_path[depth - 1] if depth else n)
                            and n.count("/") == depth]
                share = batch[row, names.index(label)] / batch[row, siblings].sum()
                if depth < len(c.tags):
                    assert share >= stop
                else:
                    assert share < stop  # where it stopped, the best child was not sure enough
                    break
        assert shallower > 0


# -- eval and calibrate per facet ---------------------------------------------------------------


def facet_manifest(data):
    rows = []
    for name in CLASSES:
        for i in range(4, 10):
            facets = {"colour": COLOURS[name]}
            facets["sleeve"] = {"alpha": "short", "bravo": "long"}.get(name)  # shoes have no sleeves: null
            rows.append({"image": f"images/{name}/{i:04d}.jpg", "labels": ["tops" if name in ("alpha", "bravo") else "shoes"],
                         "facets": facets})
    path = data / "facets.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path, rows


def test_eval_reports_each_facet_as_tagging_gives_it(data, tagger):
    import zstagger

    shop = spec_file(data, shop_spec(threshold=0.3))
    manifest, rows = facet_manifest(data)
    report = zstagger.evaluate(manifest, shop, tagger=tagger, bootstrap_rounds=50)
    figures = {m.facet: m for m in report.facets}
    results = {r.image: r for r in tagger.tag([str(data / row["image"]) for row in rows], shop)}
    for facet in ("colour", "sleeve"):
        judged = [(results[str(data / row["image"])].facets[facet].value, row["facets"][facet])
                  for row in rows if facet in row["facets"]]
        given = [(p, t) for p, t in judged if p is not None]
        assert figures[facet].judged == len(judged)
        assert figures[facet].accuracy.value == pytest.approx(np.mean([p == t for p, t in judged]))
        assert figures[facet].coverage == pytest.approx(len(given) / len(judged))
        if given:
            assert figures[facet].precision.value == pytest.approx(np.mean([p == t for p, t in given]))
    assert figures["sleeve"].judged == figures["colour"].judged == 24
    assert figures["sleeve"].applies < 24  # not applicable to the images found to be shoes: null, and right when null
    assert figures["colour"].accuracy.value > 0.5  # few-shot values on images like their examples


def test_calibrate_tunes_each_facets_threshold_to_its_target(data, tagger):
    import zstagger

    shop = spec_file(data, shop_spec(threshold=0.99))  # too strict: hardly any colour given
    manifest, rows = facet_manifest(data)
    report = zstagger.calibrate(manifest, shop, target_precision=0.95, tagger=tagger, bootstrap_rounds=20, folds=2)
    found = {r.facet: r for r in report.facets}
    colour = found["colour"]
    assert colour.status == "calibrated" and colour.figures.precision.value >= 0.95
    assert colour.previous_threshold == 0.99 and colour.threshold < 0.99 and colour.figures.coverage > 0.3
    written = {f.name: f.threshold for f in report.taxonomy.facets}
    assert written["colour"] == colour.threshold
    # the written taxonomy (beside the examples it names) gives values at that precision on the same images
    from zstagger.evaluation.api import write_taxonomy

    path = write_taxonomy(report.taxonomy, data / "shop-calibrated.yaml")
    assert {f.name: f.threshold for f in Taxonomy.from_file(path).facets} == written
    results = tagger.tag([str(data / row["image"]) for row in rows], Taxonomy.from_file(path))
    given = [(r.facets["colour"].value, row["facets"]["colour"]) for r, row in zip(results, rows)
             if r.facets["colour"].value is not None]
    assert given and np.mean([p == t for p, t in given]) >= 0.95
    assert len(given) == round(colour.figures.coverage * 24)


def test_a_manifest_naming_an_unknown_facet_or_value_is_refused_before_any_image_is_read(data, tmp_path):
    from zstagger.errors import DatasetError
    from zstagger.evaluation.datasets import load_dataset

    shop = spec_file(data, shop_spec())
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"image": "x.jpg", "labels": ["tops"], "facets": {"colour": "mauve", "size": "L"}}) + "\n")
    with pytest.raises(DatasetError) as caught:
        load_dataset(path, shop)
    assert "colour=mauve" in str(caught.value) and "size (no such facet)" in str(caught.value)
