"""The zero-shot math, on hand-made embeddings where the right answer is known."""

import math

import numpy as np
import pytest

from zstagger import Label, Taxonomy
from zstagger.classifier import TaxonomyClassifier
from zstagger.engine.scoring import ScoringPlan, ensemble, hierarchical_softmax, sigmoid, softmax

SCALE = 100.0


def unit(*values):
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_ensemble_is_normalize_mean_normalize():
    prompts = np.array([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    out = ensemble(prompts, [[0, 1], [2]])
    expected = np.stack([unit(1, 1, 0), unit(0, 0, 1)])
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_single_group_softmax_is_the_pipeline_formula():
    labels = np.stack([unit(1, 0, 0), unit(0, 1, 0), unit(1, 1, 0)])
    image = unit(2, 1, 0.5)[None]
    scores, cos = ScoringPlan("softmax", labels, SCALE).score(image)
    np.testing.assert_allclose(cos, image @ labels.T, rtol=1e-6)
    expected = np.exp(SCALE * cos.astype(np.float64))
    np.testing.assert_allclose(scores, expected / expected.sum(), rtol=1e-5)


def test_hierarchical_softmax_children_share_their_parents_score():
    logits = np.array([[1.0, 2.0, 0.5, 3.0, -1.0]])
    groups = [np.array([0, 1]), np.array([2, 3, 4])]  # labels 2-4 are children of label 1
    scores = hierarchical_softmax(logits, groups, [-1, 1])
    assert math.isclose(float(scores[0, :2].sum()), 1.0, rel_tol=1e-6)
    assert math.isclose(float(scores[0, 2:].sum()), float(scores[0, 1]), rel_tol=1e-6)
    np.testing.assert_allclose(scores[0, 2:] / scores[0, 1], softmax(logits[0, 2:]), rtol=1e-6)


def test_contrastive_scores_each_label_against_its_own_rivals():
    labels = np.stack([unit(1, 0, 0), unit(0, 1, 0)])
    rivals = np.stack([unit(1, 0.2, 0), unit(0, 0, 1)])
    mask = np.array([[True, False], [True, True]])
    image = unit(1, 0.5, 0.3)[None]
    scores, _ = ScoringPlan("contrastive", labels, SCALE, competitor_embeds=rivals, competitor_mask=mask).score(image)
    s = SCALE * (image @ labels.T)[0].astype(np.float64)
    r = SCALE * (image @ rivals.T)[0].astype(np.float64)
    expected0 = math.exp(s[0]) / (math.exp(s[0]) + math.exp(r[0]))
    expected1 = math.exp(s[1]) / (math.exp(s[1]) + math.exp(r[0]) + math.exp(r[1]))
    np.testing.assert_allclose(scores[0], [expected0, expected1], atol=1e-6)


def test_contrastive_needs_a_rival_per_label():
    with pytest.raises(ValueError):
        ScoringPlan("contrastive", np.eye(2), SCALE, competitor_embeds=np.eye(2), competitor_mask=np.zeros((2, 2), dtype=bool))


def test_sigmoid_uses_scale_and_bias():
    labels = np.stack([unit(1, 0), unit(0, 1)])
    image = unit(1, 1)[None]
    scores, cos = ScoringPlan("sigmoid", labels, 10.0, -5.0).score(image)
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-(10.0 * cos.astype(np.float64) - 5.0))), rtol=1e-6)
    assert sigmoid(np.array([-1000.0, 1000.0])).tolist() == [0.0, 1.0]  # no overflow at the extremes


# --- taxonomy -> classifier, with an "encoder" that maps each word to a fixed direction ---

WORDS = ["cat", "dog", "car", "other", "gun", "toy", "knife", "shoes", "boots", "apparel", "food"]


def fake_embed(prompts):
    rows = []
    for p in prompts:
        v = np.zeros(len(WORDS), dtype=np.float32)
        for i, word in enumerate(WORDS):
            if word in p:
                v[i] = 1.0
        rows.append(v)
    return np.stack(rows)


def image_of(**weights):
    v = np.array([float(weights.get(w, 0.0)) for w in WORDS], dtype=np.float32)
    return (v / np.linalg.norm(v))[None]


def build(taxonomy, **kw):
    return TaxonomyClassifier.build(taxonomy, fake_embed, logit_scale=kw.pop("scale", 20.0), **kw)


def test_single_label_tags_the_winner_over_its_threshold():
    tax = Taxonomy(name="pets", templates=["{}"], default_threshold=0.5,
                   labels=[Label(name="cat"), Label(name="dog"), Label(name="other", background=True)])
    clf = build(tax)
    cat, unsure, background = clf.classify(np.concatenate([image_of(cat=1), image_of(cat=1, dog=1), image_of(other=1)]))
    assert cat.tags == ["cat"] and cat.scores[0][0] == "cat" and cat.verdict is None
    assert unsure.tags == []  # cat and dog tie at ~0.5 each minus the background share: none of the above
    assert background.tags == [] and background.scores[0][0] == "other"
    assert math.isclose(sum(s for _, s, _ in cat.scores), 1.0, rel_tol=1e-5)


def test_hierarchy_descends_from_the_root():
    tax = Taxonomy(name="shop", templates=["{}"], labels=[
        Label(name="apparel"), Label(name="food"),
        Label(name="apparel/shoes", text="shoes", parent="apparel"),
        Label(name="apparel/boots", text="boots", parent="apparel"),
    ])
    result = build(tax).classify(image_of(apparel=1, boots=1))[0]
    assert result.tags == ["apparel", "apparel/boots"]
    scores = {label: s for label, s, _ in result.scores}
    assert math.isclose(scores["apparel/shoes"] + scores["apparel/boots"], scores["apparel"], rel_tol=1e-5)


def moderation(**kw):
    return Taxonomy(name="mod", mode="multi", templates=["{}"], default_threshold=0.6, labels=[
        Label(name="gun", negatives=["toy"], action="block"),
        Label(name="knife", negatives=["food"], action="review"),
        Label(name="cat", action="allow"),
        Label(name="other", background=True, action="allow"),
    ], **kw)


def test_multi_label_scores_are_independent_and_give_a_verdict():
    clf = build(moderation())
    gun, knife, both, toy, nothing = clf.classify(np.concatenate([
        image_of(gun=1), image_of(knife=1), image_of(gun=1, knife=1), image_of(toy=1), image_of(other=1),
    ]))
    assert gun.tags == ["gun"] and gun.verdict == "block"
    assert knife.tags == ["knife"] and knife.verdict == "review"
    assert set(both.tags) == {"gun", "knife"} and both.verdict == "block"
    assert toy.tags == [] and toy.verdict == "allow"
    assert nothing.tags == [] and nothing.verdict == "allow"
    assert "other" not in {label for label, _, _ in gun.scores}  # background labels are rivals, not results


def test_multi_label_score_of_one_label_does_not_depend_on_the_others():
    small = Taxonomy(name="m", mode="multi", templates=["{}"], labels=[
        Label(name="gun", negatives=["toy"])])
    image = image_of(gun=1, toy=0.5, cat=1)
    alone = dict((l, s) for l, s, _ in build(small).classify(image)[0].scores)
    bigger = Taxonomy(name="m", mode="multi", templates=["{}"], labels=[
        Label(name="gun", negatives=["toy"]), Label(name="cat", negatives=["dog"])])
    together = dict((l, s) for l, s, _ in build(bigger).classify(image)[0].scores)
    assert math.isclose(alone["gun"], together["gun"], rel_tol=1e-6)


def test_multi_label_child_fires_only_with_its_parent():
    tax = Taxonomy(name="m", mode="multi", templates=["{}"], default_threshold=0.6, negatives=["other"], labels=[
        Label(name="apparel"), Label(name="apparel/shoes", text="shoes", parent="apparel")])
    with_parent, without = build(tax).classify(np.concatenate([image_of(apparel=1, shoes=1), image_of(shoes=1)]))
    assert set(with_parent.tags) == {"apparel", "apparel/shoes"}
    assert without.tags == []


def test_top_k_and_sorting():
    result = build(moderation()).classify(image_of(gun=1, knife=0.5), top_k=2)[0]
    assert [label for label, _, _ in result.scores] == ["gun", "knife"]
    assert result.scores[0][1] >= result.scores[1][1]


def test_sigmoid_models_score_with_the_sigmoid_in_both_modes():
    clf = build(moderation(), scale=10.0, logit_bias=-2.0, uses_sigmoid=True)
    result = clf.classify(image_of(gun=1))[0]
    gun = next(s for l, s, c in result.scores if l == "gun")
    assert math.isclose(gun, 1 / (1 + math.exp(-(10.0 * 1.0 - 2.0))), rel_tol=1e-5)
