"""Shopify's product taxonomy: the import command regenerates a taxonomy from the published dist files.

Run on the sample shipped in tests/data/shopify (self-written, in Shopify's format), so the
generator cannot rot: the counts equal the source files', the spec validates and loads, it
records its source and licence, and results carry the category path, Shopify ID and Google ID."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from harness import run_cli

from zstagger import Taxonomy
from zstagger.embedder import NO_CACHE
from zstagger.errors import TaxonomyError
from zstagger.product_taxonomy import read_dist, shopify_spec
from zstagger.synthetic import sample_image
from zstagger.tagger import Tagger

DIST = Path(__file__).parent / "data" / "shopify" / "dist" / "en"


def source_counts():
    """What the source files hold, read here independently of the generator."""
    categories = json.loads((DIST / "categories.json").read_text())
    attributes = json.loads((DIST / "attributes.json").read_text())["attributes"]
    mapping = json.loads(next((DIST / "integrations" / "google").glob("*.json")).read_text())
    every = {c["full_name"]: c for v in categories["verticals"] for c in v["categories"]}
    google = {r["input"]["category"]["id"]: r["output"]["category"][0]["id"] for m in mapping["mappings"] for r in m["rules"]}
    listed = {a["id"] for c in every.values() for a in c["attributes"]}
    with_values = [a for a in attributes if a["values"] and a["id"] in listed]
    return categories["version"], every, attributes, with_values, google


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("shopify") / "shopify.yaml"
    done = run_cli("taxonomies", "import-shopify", str(DIST), "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out, json.loads(done.stdout), done.stderr


def test_the_generated_taxonomy_has_every_category_and_attribute_of_the_source(generated):
    out, summary, stderr = generated
    version, every, attributes, with_values, google = source_counts()
    taxonomy = Taxonomy.from_file(out)
    assert summary["categories"] == len(taxonomy.labels) == len(every) == 37
    assert summary["attributes"] == len(attributes) == 8
    assert summary["facets"] == len(taxonomy.facets) == len(with_values) == 7  # one attribute lists no values
    assert summary["google_ids"] == len(google) == 36
    assert {label.name for label in taxonomy.labels} == set(every)
    for label in taxonomy.labels:
        source = every[label.name]
        assert label.text == source["name"]
        assert (label.parent is None) == (source["parent_id"] is None)
        assert taxonomy.metadata[label.name]["shopify_id"] == source["id"]
        assert taxonomy.metadata[label.name].get("google_id") == google.get(source["id"])
    assert taxonomy.version == f"shopify-{version}" and taxonomy.source["version"] == version
    assert taxonomy.source["licence"] == "MIT" and "Shopify Inc." in taxonomy.source["attribution"]
    assert len(taxonomy.source["sha256_categories.json"]) == 64
    assert taxonomy.descent.scoring == "entered" and taxonomy.descent.stop == 0.3
    notice = out.with_name("shopify.LICENSE.txt").read_text()
    assert "MIT" in notice and "github.com/Shopify/product-taxonomy" in notice
    assert "categories" in stderr  # progress on stderr, the summary alone on stdout


def test_attributes_become_facets_under_the_highest_categories_that_list_them(generated):
    taxonomy = Taxonomy.from_file(generated[0])
    facets = {facet.name: facet for facet in taxonomy.facets}
    assert facets["sleeve-length-type"].applies_to == ["Apparel & Accessories > Clothing > Dresses",
                                                       "Apparel & Accessories > Clothing > Tops"]
    # colour is listed by every apparel category (inherited) but applies once, under the top one
    assert facets["color"].applies_to == ["Apparel & Accessories", "Home & Garden > Decor",
                                          "Home & Garden > Kitchen & Dining > Tableware"]
    assert [v.name for v in facets["fabric"].values] == ["Cotton", "Denim", "Wool", "Linen", "Polyester", "Silk"]
    assert "age-group" not in facets and taxonomy.source["attributes_without_values"] == "age-group"


def test_results_carry_the_category_path_its_shopify_id_and_google_id(generated, tiny_model_dir, tmp_path):
    out = tmp_path / "deep.yaml"
    done = run_cli("taxonomies", "import-shopify", str(DIST), "--out", str(out), "--stop", "0")
    assert done.returncode == 0, done.stderr
    taxonomy = Taxonomy.from_file(out)
    _, every, _, _, google = source_counts()
    images = [sample_image(seed) for seed in range(12)]
    with Tagger(str(tiny_model_dir), device="cpu", precision="fp32", batch_size=4) as tagger:
        results = tagger.tag(images, taxonomy)
        compiled = tagger.classifier(taxonomy)
    for result in results:
        line = json.loads(result.to_json())
        category = line["category"]
        assert category["path"] == result.tags and category["label"] == result.tags[-1]
        assert not every[category["label"]]["children"]  # no confidence stop: down to a leaf
        assert category["shopify_id"] == every[category["label"]]["id"]
        assert category.get("google_id") == google.get(category["shopify_id"])
        for name, facet in line["facets"].items():
            applies = any(tag in taxonomy.facets[[f.name for f in taxonomy.facets].index(name)].applies_to
                          for tag in result.tags)
            assert (facet["score"] is not None) == applies
    plates = "Home & Garden > Kitchen & Dining > Tableware > Plates"  # the one category the sample leaves unmapped
    entry = compiled.category([compiled.names.index(n) for n in taxonomy.path_of(plates)])
    assert entry["path"] == taxonomy.path_of(plates) and "google_id" not in entry and entry["shopify_id"]


def test_descent_scores_only_the_groups_it_enters(generated, tiny_model_dir):
    taxonomy = Taxonomy.from_file(generated[0])
    with Tagger(str(tiny_model_dir), device="cpu", precision="fp32", batch_size=4) as tagger:
        images = [sample_image(seed) for seed in range(8)]
        vectors = np.concatenate([v for _, v, _ in tagger.embed_batches(images, route=NO_CACHE)])
        compiled = tagger.classifier(taxonomy)
        before = compiled.labels_scored
        done = compiled.classify(vectors)
    roots = len(compiled.children[-1])
    # the roots, then the children of each label it chose (where it stopped, too: they were weighed)
    entered = sum(roots + sum(len(compiled.children.get(compiled.names.index(t), [])) for t in c.tags) for c in done)
    assert compiled.labels_scored - before == entered < len(images) * len(taxonomy.labels)


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "categories.json").unlink(), "cannot read Shopify's taxonomy file: no such file"),
    (lambda d: (d / "attributes.json").write_text("{not json"), "attributes.json: not JSON"),
    (lambda d: (d / "categories.json").write_text('{"version": "x", "items": []}'), "expected a list under 'verticals'"),
])
def test_broken_dist_files_are_one_line_errors(tmp_path, damage, message):
    dist = tmp_path / "en"
    shutil.copytree(DIST, dist)
    damage(dist)
    done = run_cli("taxonomies", "import-shopify", str(dist), "--out", str(tmp_path / "t.yaml"))
    assert done.returncode != 0 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2 and "Traceback" not in done.stderr  # "reading ..." then the error
    with pytest.raises(TaxonomyError):
        shopify_spec(read_dist(dist))


def test_the_google_mapping_of_an_unreleased_version_is_found_among_older_ones(tmp_path):
    """Shopify's main branch says 2025-01-unstable in its files while the mapping is named
    shopify_2025-01_to_google_..., beside the mappings of earlier releases."""
    dist = tmp_path / "en"
    shutil.copytree(DIST, dist)
    categories = json.loads((dist / "categories.json").read_text())
    categories["version"] = "2025-01-unstable"
    (dist / "categories.json").write_text(json.dumps(categories))
    google = dist / "integrations" / "google"
    current = next(google.glob("*.json"))
    older = json.loads(current.read_text())
    for mapping in older["mappings"]:
        for rule in mapping["rules"]:
            rule["output"]["category"][0]["id"] = "1"  # an older release's mapping: other IDs
    (google / "shopify_2024-10_to_google_2021-09-21.json").write_text(json.dumps(older))
    (google / "shopify_2025-04_to_google_2021-09-21.json").write_text(json.dumps(older))
    *_, expected = source_counts()
    spec = shopify_spec(read_dist(dist))
    found = {meta["shopify_id"]: meta.get("google_id") for meta in spec["metadata"].values()}
    assert {k: v for k, v in found.items() if v} == expected
    assert spec["source"]["google_mapping"] == current.name
    (google / current.name).unlink()  # none for this version: no IDs, said on stderr, not an older one's
    done = run_cli("taxonomies", "import-shopify", str(dist), "--out", str(tmp_path / "t.yaml"))
    assert done.returncode == 0 and "no Google mapping for this version" in done.stderr
    assert json.loads(done.stdout)["google_ids"] == 0
