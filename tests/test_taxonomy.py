import gc
import json
import os
import re
import subprocess
import sys
import time

import pytest
from harness import clean_environ

from zstagger import Label, Taxonomy, TaxonomyError
from zstagger.builtin import packaged_taxonomy
from zstagger.registry import resolve_taxonomy
from zstagger.taxonomy import DEFAULT_TEMPLATE


def shop(**overrides):
    spec = dict(
        name="shop",
        mode="single",
        templates=["a photo of {}.", "a product shot of {}."],
        labels=[
            Label(name="apparel"),
            Label(name="apparel/shoes", parent="apparel", synonyms=["sneakers"], threshold=0.1),
            Label(name="toys"),
            Label(name="other", background=True),
        ],
    )
    spec.update(overrides)
    return Taxonomy(**spec)


def test_valid_taxonomy_and_prompts():
    tax = shop()
    shoes = tax.label("apparel/shoes")
    assert shoes.prompt_text == "shoes"
    assert tax.prompts_for(shoes) == [
        "a photo of shoes.", "a product shot of shoes.", "a photo of sneakers.", "a product shot of sneakers.",
    ]
    assert tax.threshold_of(shoes) == 0.1 and tax.threshold_of(tax.label("toys")) == 0.0
    assert tax.path_of("apparel/shoes") == ["apparel", "apparel/shoes"]
    assert not tax.has_actions


def test_a_multi_label_taxonomy_without_a_default_threshold_fires_at_one_half(tmp_path):
    """0.5: as close to the label as to its rivals (the contrastive score), SigLIP's probability 1/2.
    Not 0.0, at which every label fired on every image (a Chihuahua got verdict=block)."""
    import numpy as np

    from zstagger.classifier import TaxonomyClassifier

    spec = {"name": "pets", "mode": "multi", "labels": [
        {"name": "chihuahua", "negatives": ["a blueberry muffin"]},
        {"name": "firearms", "action": "block", "negatives": ["a toy gun"]}]}
    (tmp_path / "pets.yaml").write_text(json.dumps(spec))
    for tax in (Taxonomy(**spec), Taxonomy.from_file(tmp_path / "pets.yaml")):
        assert tax.default_threshold == 0.5 and tax.threshold_of(tax.label("firearms")) == 0.5
        assert tax.spec_dict()["default_threshold"] == 0.5  # written out, it reads the same anywhere
        classifier = TaxonomyClassifier.build(tax, lambda prompts: np.eye(len(prompts), 8, dtype=np.float32), logit_scale=10.0)
        tags = classifier.tag_rows(np.array([[0.93, 0.08], [0.2, 0.49], [0.6, 0.5]]))
        assert tags == [[0], [], [0, 1]]
        assert [classifier.verdict(t) for t in tags] == ["allow", "allow", "block"]
    # single-label: the best label of each level is the tag, as in the HF pipeline
    assert Taxonomy(name="s", labels=[Label(name="a"), Label(name="b")]).default_threshold == 0.0
    assert Taxonomy(name="m", mode="multi", default_threshold=0.2, negatives=["x"], labels=[Label(name="a")]).default_threshold == 0.2


def test_explicit_prompts_are_used_verbatim_and_underscores_read_as_spaces():
    tax = Taxonomy(name="t", templates=["{}"], labels=[Label(name="hate_symbols", prompts=["a swastika flag"])])
    assert tax.prompts_for(tax.labels[0]) == ["hate symbols", "a swastika flag"]


def test_fingerprint_is_stable_and_tracks_the_spec():
    assert shop().fingerprint == shop().fingerprint
    assert shop().fingerprint != shop(templates=["a photo of {}."]).fingerprint
    assert len(shop().fingerprint) == 16


@pytest.mark.parametrize(
    "change, expected",
    [
        (dict(labels=[Label(name="a"), Label(name="a")]), "label 'a': duplicate label name"),
        (dict(templates=["a photo of a thing"]), "template 'a photo of a thing' must contain exactly one '{}'"),
        (dict(templates=["{} and {}"]), "must contain exactly one '{}'"),
        (dict(labels=[Label(name="a", threshold=1.5)]), "label 'a': threshold 1.5 is outside [0, 1]"),
        (dict(default_threshold=-0.1), "default_threshold -0.1 is outside [0, 1]"),
        (dict(labels=[Label(name="b", parent="nope")]), "label 'b': parent 'nope' is not a label of this taxonomy"),
        (dict(labels=[Label(name="x", parent="y"), Label(name="y", parent="x")]), "label 'x': parent chain loops back"),
        (dict(mode="multi", labels=[Label(name="gun")]), "label 'gun': multi-label scoring needs something to compare"),
        (dict(labels=[Label(name="bg", background=True)]), "every label is a background label"),
        (dict(labels=[]), "has no labels"),
    ],
)
def test_invalid_specs_name_taxonomy_label_and_problem(change, expected):
    with pytest.raises(TaxonomyError) as info:
        shop(**change)
    message = str(info.value)
    assert "taxonomy 'shop'" in message
    assert expected in message


def test_all_problems_are_reported_at_once():
    with pytest.raises(TaxonomyError) as info:
        shop(labels=[Label(name="a", threshold=2), Label(name="b", parent="zz")])
    assert "label 'a'" in str(info.value) and "label 'b'" in str(info.value)


def test_field_type_errors_name_the_label():
    with pytest.raises(TaxonomyError) as info:
        Taxonomy.parse({"name": "mod", "labels": [{"name": "gun", "action": "nuke"}]})
    message = str(info.value)
    assert "taxonomy 'mod': label 'gun': action" in message and "allow" in message


def test_unknown_fields_are_rejected():
    with pytest.raises(TaxonomyError, match="treshold"):
        Taxonomy.parse({"name": "t", "labels": [{"name": "a", "treshold": 0.3}]})


def test_from_file_yaml_and_json(tmp_path):
    (tmp_path / "t.yaml").write_text("name: birds\nlabels:\n  - name: owl\n  - name: heron\n")
    (tmp_path / "t.json").write_text(json.dumps({"name": "fish", "labels": [{"name": "cod"}]}))
    assert [l.name for l in Taxonomy.from_file(tmp_path / "t.yaml").labels] == ["owl", "heron"]
    assert Taxonomy.from_file(tmp_path / "t.json").name == "fish"
    (tmp_path / "bad.yaml").write_text("name: x\nlabels: [\n")
    with pytest.raises(TaxonomyError, match="bad.yaml"):
        Taxonomy.from_file(tmp_path / "bad.yaml")
    (tmp_path / "invalid.yaml").write_text("name: x\nlabels:\n  - name: a\n    threshold: 3\n")
    with pytest.raises(TaxonomyError, match=r"invalid.yaml: taxonomy 'x': label 'a': threshold 3"):
        Taxonomy.from_file(tmp_path / "invalid.yaml")


def test_adhoc_labels_match_the_hf_pipeline_convention():
    tax = Taxonomy.from_labels(["cat", " dog ", "cat", "hot_dog"])
    assert [l.name for l in tax.labels] == ["cat", "dog", "hot_dog"]
    assert tax.templates == [DEFAULT_TEMPLATE] == ["This is a photo of {}."]
    assert tax.prompts_for(tax.labels[2]) == ["This is a photo of hot_dog."]  # used exactly as given


def test_builtin_taxonomies_have_real_content():
    moderation = packaged_taxonomy("moderation.yaml")
    assert moderation.mode == "multi" and moderation.has_actions
    actions = {l.action for l in moderation.labels}
    assert actions == {"allow", "review", "block"}
    names = {l.name for l in moderation.labels}
    assert {"explicit_nudity", "graphic_violence", "firearms", "drugs", "self_harm", "hate_symbols"} <= names
    assert any(l.background for l in moderation.labels)
    assert all(l.negatives for l in moderation.labels if not l.background)

    ecommerce = packaged_taxonomy("ecommerce.yaml")
    tops = [l for l in ecommerce.labels if l.parent is None and not l.background]
    assert len(tops) >= 19
    assert any(l.parent == "apparel_accessories" for l in ecommerce.labels)

    medical = packaged_taxonomy("medical.yaml")
    assert "NOT for diagnosis" in medical.description
    texts = " ".join(l.text or "" for l in medical.labels)
    for term in ("X-ray", "CT", "MRI", "ultrasound", "histopathology", "dermoscopy", "fundus", "endoscopy"):
        assert term in texts


# --- templates: a single bare {} (one owner: the Taxonomy validator) -------------------------

BAD_TEMPLATES = [
    "{:>300000000}",  # a format spec: renders a 300 MB prompt per label
    "{{}}",  # only escaped braces: the label never goes in, every label scores the same
    "{0}", "{x}", "{!r}", "{.real}", "{[0]}", "{} and {}", "{", "}", "a photo of a thing", "{:{}}",
]


@pytest.mark.parametrize("template", BAD_TEMPLATES)
def test_only_a_single_bare_placeholder_is_accepted_everywhere(template):
    expected = "only a bare '{}'"
    with pytest.raises(TaxonomyError, match=re.escape(expected)):
        Taxonomy.from_labels(["cat", "dog"], template)  # --template of tag and enqueue
    with pytest.raises(TaxonomyError, match=re.escape(expected)):
        Taxonomy.parse({"name": "t", "templates": [template], "labels": [{"name": "a"}]})  # queue messages, files
    with pytest.raises(TaxonomyError, match=re.escape(expected)):
        resolve_taxonomy(labels=["a"], template=template)


@pytest.mark.parametrize("template", ["{}", "a photo of {}.", "{{braces}} around {}", "{}}}", "{:}"])
def test_bare_placeholders_with_escaped_braces_are_fine(template):
    tax = Taxonomy.from_labels(["cat"], template)
    assert tax.prompts_for(tax.labels[0]) == [template.format("cat")]
    assert "cat" in template.format("cat")


# --- scale: validation linear in labels, the registry parsed once ----------------------------


def big_multi_spec(count: int) -> dict:
    """A multi-label taxonomy with a background label at the end and one long parent chain."""
    labels = [{"name": f"l{i}", **({"parent": f"l{i - 1}"} if i else {})} for i in range(count)]
    labels.append({"name": "none", "background": True})
    return {"name": "big", "mode": "multi", "labels": labels}


def validation_seconds(count: int) -> float:
    spec = big_multi_spec(count)
    best = float("inf")
    gc.disable()  # collections of a growing heap would blur the growth being measured
    try:
        for _ in range(3):  # this process's CPU time: time other processes take from it on a busy machine is not counted
            start = time.process_time()
            Taxonomy.parse(spec)
            best = min(best, time.process_time() - start)
    finally:
        gc.enable()
    return best


def test_validation_time_grows_linearly_with_labels():
    small, large = validation_seconds(2_000), validation_seconds(20_000)
    print(f"validation: 2,000 labels {small:.3f}s, 20,000 labels {large:.3f}s, ratio {large / small:.1f} (linear: 10)")
    assert large / small < 30  # quadratic: 100


def test_a_cycle_in_a_long_chain_names_only_its_members():
    spec = big_multi_spec(3000)
    spec["labels"][0]["parent"] = "l2999"  # the whole chain is now one loop
    spec["labels"].append({"name": "tail", "parent": "l5"})  # leads into the loop, is not part of it
    with pytest.raises(TaxonomyError) as info:
        Taxonomy.parse(spec)
    looping = [line for line in str(info.value).splitlines() if "loops back" in line]
    assert len(looping) == 3000 and not any("'tail'" in line for line in looping)


REGISTRY_ONCE = """
import os, sys
target = sys.argv[1]
opened = []
sys.addaudithook(lambda event, args: event == "open" and os.fspath(args[0]) == target and opened.append(1)
                 if isinstance(args[0], (str, bytes, os.PathLike)) else None)
import contextlib, io
from zstagger.cli import cli
from zstagger.registry import get_taxonomy, registered_taxonomies, resolve_taxonomy
for _ in range(200):
    assert len(get_taxonomy("big").labels) == 20_001
    resolve_taxonomy("big")
    registered_taxonomies()
with contextlib.redirect_stdout(io.StringIO()):  # the commands themselves, in this process
    for args in (["taxonomies"], ["taxonomies", "show", "big"], ["taxonomies", "--json"]):
        cli.main(args, standalone_mode=False)
print(len(opened))
"""


def test_a_big_taxonomy_file_is_read_once_per_process(tmp_path):
    (tmp_path / "big.json").write_text(json.dumps(big_multi_spec(20_000)))
    env = {**clean_environ(), "ZSTAGGER_TAXONOMY_PATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", REGISTRY_ONCE, str(tmp_path / "big.json")],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"  # 600 lookups and 3 commands, one read


# --- every problem of a file at once, type errors included ------------------------------------


def test_a_wrongly_typed_field_does_not_hide_the_other_problems():
    spec = {
        "name": "shop",
        "default_threshold": "high",
        "labels": [
            {"name": "gun", "action": "nuke", "threshold": 2},
            {"name": "gun"},
            {"name": "shoes", "parent": "apparel"},
            {"name": 7, "synonyms": "x"},
            {"name": "toys", "treshold": 0.3},
        ],
    }
    with pytest.raises(TaxonomyError) as info:
        Taxonomy.parse(spec, source="shop.yaml")
    message = str(info.value)
    for expected in [
        "taxonomy 'shop': default_threshold: Input should be a valid number",
        "label 'gun': action: Input should be 'allow', 'review' or 'block'",
        "label 'toys': treshold: Extra inputs are not permitted",
        "labels[3]: name: Input should be a valid string",
        "label 'gun': threshold 2.0 is outside [0, 1]",  # semantic problems, found all the same
        "label 'gun': duplicate label name",
        "label 'shoes': parent 'apparel' is not a label of this taxonomy",
    ]:
        assert expected in message, f"{expected!r} missing from:\n{message}"
    assert all(line.startswith("shop.yaml: ") for line in message.splitlines()[:1])
