"""The zero-shot math, on hand-made embeddings where the right answer is known."""

import math

import pytest
import torch

from zstagger import Label, Taxonomy
from zstagger.classifier import TaxonomyClassifier
from zstagger.engine.scoring import ScoringPlan, ensemble, hierarchical_softmax

SCALE = 100.0


def unit(*values):
    v = torch.tensor(values, dtype=torch.float32)
    return v / v.norm()


def test_ensemble_is_normalize_mean_normalize():
    prompts = torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    out = ensemble(prompts, [[0, 1], [2]])
    expected = torch.stack([unit(1, 1, 0), unit(0, 0, 1)])
    assert torch.allclose(out, expected, atol=1e-6)


def test_single_group_softmax_is_the_pipeline_formula():
    labels = torch.stack([unit(1, 0, 0), unit(0, 1, 0), unit(1, 1, 0)])
    image = unit(2, 1, 0.5).unsqueeze(0)
    scores, cos = ScoringPlan("softmax", labels, SCALE).score(image)
    assert torch.allclose(cos, image @ labels.T)
    assert torch.allclose(scores, torch.softmax(SCALE * cos, dim=-1))


def test_hierarchical_softmax_children_share_their_parents_score():
    logits = torch.tensor([[1.0, 2.0, 0.5, 3.0, -1.0]])
    groups = [torch.tensor([0, 1]), torch.tensor([2, 3, 4])]  # labels 2-4 are children of label 1
    scores = hierarchical_softmax(logits, groups, [-1, 1])
    assert math.isclose(scores[0, :2].sum().item(), 1.0, rel_tol=1e-6)
    assert math.isclose(scores[0, 2:].sum().item(), scores[0, 1].item(), rel_tol=1e-6)
    assert torch.allclose(scores[0, 2:] / scores[0, 1], torch.softmax(logits[0, 2:], -1))


def test_contrastive_scores_each_label_against_its_own_rivals():
    labels = torch.stack([unit(1, 0, 0), unit(0, 1, 0)])
    rivals = torch.stack([unit(1, 0.2, 0), unit(0, 0, 1)])
    mask = torch.tensor([[True, False], [True, True]])
    image = unit(1, 0.5, 0.3).unsqueeze(0)
    scores, _ = ScoringPlan("contrastive", labels, SCALE, competitor_embeds=rivals, competitor_mask=mask).score(image)
    s = SCALE * (image @ labels.T)[0]
    r = SCALE * (image @ rivals.T)[0]
    expected0 = torch.softmax(torch.stack([s[0], r[0]]), 0)[0]
    expected1 = torch.softmax(torch.stack([s[1], r[0], r[1]]), 0)[0]
    assert torch.allclose(scores[0], torch.stack([expected0, expected1]), atol=1e-6)


def test_contrastive_needs_a_rival_per_label():
    with pytest.raises(ValueError):
        ScoringPlan("contrastive", torch.eye(2), SCALE, competitor_embeds=torch.eye(2), competitor_mask=torch.zeros(2, 2, dtype=bool))


def test_sigmoid_uses_scale_and_bias():
    labels = torch.stack([unit(1, 0), unit(0, 1)])
    image = unit(1, 1).unsqueeze(0)
    scores, cos = ScoringPlan("sigmoid", labels, 10.0, -5.0).score(image)
    assert torch.allclose(scores, torch.sigmoid(10.0 * cos - 5.0))


# --- taxonomy -> classifier, with an "encoder" that maps each word to a fixed direction ---

WORDS = ["cat", "dog", "car", "other", "gun", "toy", "knife", "shoes", "boots", "apparel", "food"]


def fake_embed(prompts):
    rows = []
    for p in prompts:
        v = torch.zeros(len(WORDS))
        for i, word in enumerate(WORDS):
            if word in p:
                v[i] = 1.0
        rows.append(v)
    return torch.stack(rows)


def image_of(**weights):
    v = torch.tensor([float(weights.get(w, 0.0)) for w in WORDS])
    return (v / v.norm()).unsqueeze(0)


def build(taxonomy, **kw):
    return TaxonomyClassifier.build(taxonomy, fake_embed, logit_scale=kw.pop("scale", 20.0), **kw)


def test_single_label_tags_the_winner_over_its_threshold():
    tax = Taxonomy(name="pets", templates=["{}"], default_threshold=0.5,
                   labels=[Label(name="cat"), Label(name="dog"), Label(name="other", background=True)])
    clf = build(tax)
    cat, unsure, background = clf.classify(torch.cat([image_of(cat=1), image_of(cat=1, dog=1), image_of(other=1)]))
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
    gun, knife, both, toy, nothing = clf.classify(torch.cat([
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
    with_parent, without = build(tax).classify(torch.cat([image_of(apparel=1, shoes=1), image_of(shoes=1)]))
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
