"""The review queue on SQLite and on a real PostgreSQL: strata and inclusion probabilities,
claims that two reviewers never share (two clients at once), expiry, decisions with who and
when, undo, export weights, and everything still there after the database is reopened."""

import hashlib
import json
import threading
import time

import numpy as np
import pytest

from zstagger import Taxonomy
from zstagger.review import ReviewError, ReviewQueue, Selection, choose, default_bands
from zstagger.store import open_store

POLICY = Taxonomy.parse({"name": "pol", "version": "3", "mode": "multi", "default_threshold": 0.5, "labels": [
    {"name": "weapon", "threshold": 0.7, "action": "block"},
    {"name": "drugs", "action": "review"},
    {"name": "cat"},
    {"name": "safe", "background": True},
]}, source="test")


def line(reference, weapon, drugs=0.1, cat=0.2):
    scores = {"weapon": weapon, "drugs": drugs, "cat": cat}
    tags = [n for n, s in scores.items() if s >= {"weapon": 0.7, "drugs": 0.5, "cat": 0.5}[n]]
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    return json.dumps({"image": reference, "taxonomy": "pol", "scores": [{"label": n, "score": s, "cosine": 0.0} for n, s in ranked],
                       "tags": tags, "verdict": "block" if "weapon" in tags else ("review" if "drugs" in tags else "allow"),
                       "error": None, "provenance": {"taxonomy_version": "3"}})


def test_bands_default_from_the_review_threshold_up_to_each_labels_own():
    bands = default_bands(POLICY)
    assert bands == {"weapon": (0.5, 0.7), "drugs": (0.4, 0.5)}  # drugs' threshold is the default: a 0.1 band under it
    assert default_bands(POLICY, overrides={"cat": (0.3, 0.6)})["cat"] == (0.3, 0.6)
    selection = Selection(bands, audit_rate=0.25, seed="s")
    assert choose({"weapon": 0.6, "drugs": 0.1}, [], selection, "", "a.jpg") == ("band", 1.0, "weapon")
    assert choose({"weapon": 0.6, "drugs": 0.45}, [], selection, "", "a.jpg") == ("band", 1.0, "weapon")  # highest in band
    assert choose({"weapon": 0.9, "drugs": 0.1}, ["weapon"], selection, "", "a.jpg") in (None, ("audit", 0.25, "weapon"))
    picked = [choose({"weapon": 0.1, "drugs": 0.1}, [], selection, "", f"{i}.jpg") for i in range(4000)]
    audited = [p for p in picked if p is not None]
    assert all(p[:2] == ("audit", 0.25) for p in audited)
    assert 0.22 < len(audited) / 4000 < 0.28  # the sample's share is its inclusion probability
    again = [choose({"weapon": 0.1, "drugs": 0.1}, [], selection, "", f"{i}.jpg") for i in range(4000)]
    assert picked == again  # the same results, the same choice
    with pytest.raises(ValueError):
        Selection(bands, audit_rate=0)


def test_blocked_rate_samples_the_results_above_their_band_as_a_stratum_of_their_own():
    selection = Selection(default_bands(POLICY), audit_rate=0.02, blocked_rate=0.5, seed="s")
    above = [choose({"weapon": 0.9, "drugs": 0.1}, ["weapon"], selection, "", f"{i}.jpg") for i in range(4000)]
    kept = [p for p in above if p is not None]
    assert all(p == ("blocked", 0.5, "weapon") for p in kept) and 0.46 < len(kept) / 4000 < 0.54
    assert choose({"weapon": 0.6, "drugs": 0.1}, [], selection, "", "a.jpg") == ("band", 1.0, "weapon")  # the band first
    assert choose({"weapon": 0.1, "drugs": 0.1}, [], selection, "", "0.jpg") in (None, ("audit", 0.02, "weapon"))
    without = Selection(default_bands(POLICY), audit_rate=0.02, seed="s")  # without a blocked rate, they are audited
    assert {p[0] for i in range(400) if (p := choose({"weapon": 0.9}, ["weapon"], without, "", f"{i}.jpg"))} == {"audit"}
    only = Selection(default_bands(POLICY), blocked_rate=1.0, strata=("band",))
    assert choose({"weapon": 0.9}, ["weapon"], only, "", "a.jpg") is None
    with pytest.raises(ValueError):
        Selection(default_bands(POLICY), blocked_rate=0)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
    else:
        server = request.getfixturevalue("postgres")
        yield server.url
        store = open_store(server.url)
        store.transaction(lambda tx: [tx.execute(f"DROP TABLE IF EXISTS {t}") for t in
                                      ("zstagger_review_decisions", "zstagger_review_items", "zstagger_review_schema")],
                          write=True)
        store.close()


def test_the_review_queue_uses_only_the_stores_public_interface():
    """No reach into the store's private methods: the review queue holds its transactions through
    ``EmbeddingStore.transaction`` (a neighbour's contract), so the store may change inside."""
    import ast
    from pathlib import Path

    import zstagger.review

    private = []
    for path in Path(zstagger.review.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id == "self")):
                private.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert private == []


def filled(url, count=40, audit_rate=0.5):
    queue = ReviewQueue(open_store(url))
    lines = [line(f"img{i:03d}.jpg", weapon=0.55 if i % 2 == 0 else 0.05 + i / 1000) for i in range(count)]
    counts = queue.enqueue(lines, Selection(default_bands(POLICY), audit_rate=audit_rate, seed="t"), job_id="job-1")
    return queue, counts


def test_two_reviewers_at_once_never_get_the_same_item(database):
    queue, counts = filled(database, count=60)
    assert counts["band"] == 30 and counts["added"] == counts["band"] + counts["audit"] and counts["audit"] > 5
    got: dict[str, list[int]] = {"ann": [], "bob": []}
    start = threading.Barrier(2)

    failures = []

    def review(name):
        own = ReviewQueue(open_store(database))  # its own connection, as another server process would have
        try:
            start.wait()
            while (item := own.claim(name)) is not None:
                got[name].append(item.id)
                time.sleep(0.001)  # a reviewer looks at the item before asking for the next
        except Exception as exc:
            failures.append(exc)
        finally:
            own.store.close()

    threads = [threading.Thread(target=review, args=(name,)) for name in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures
    assert not set(got["ann"]) & set(got["bob"])
    assert sorted(got["ann"] + got["bob"]) == sorted(set(got["ann"] + got["bob"])) and len(got["ann"]) + len(got["bob"]) == counts["added"]
    assert got["ann"] and got["bob"]  # both were served
    again = queue.enqueue([line(f"img{i:03d}.jpg", weapon=0.55 if i % 2 == 0 else 0.05 + i / 1000) for i in range(60)],
                          Selection(default_bands(POLICY), audit_rate=0.5, seed="t"), job_id="job-1")
    assert again["added"] == 0  # enqueueing the same results again adds nothing
    queue.store.close()


def test_claims_expire_decisions_record_who_and_when_and_undo(database):
    queue, _ = filled(database, count=10)
    first = queue.claim("ann", lease=0.3)
    assert first.claimed_by == "ann" and first.stratum in ("band", "audit")
    assert first.result["image"] == first.reference  # the result line travels with the item (its decision trail too)
    time.sleep(0.5)
    taken = queue.claim("bob")  # ann's claim ran out: her item goes to the next reviewer
    assert taken.id == first.id
    with pytest.raises(ReviewError) as lost:
        queue.decide(first.id, "ann", "accept")
    assert lost.value.kind == "not_claimed"
    before = time.time()
    decision = queue.decide(taken.id, "bob", "reject")
    assert decision.reviewer == "bob" and before <= decision.decided <= time.time()
    assert decision.labels == ([t for t in taken.tags if t != taken.label] if taken.label in taken.tags else [*taken.tags, taken.label])
    with pytest.raises(ReviewError) as twice:
        queue.decide(taken.id, "bob", "accept")
    assert twice.value.kind == "already_decided"
    other = queue.claim("bob")
    with pytest.raises(ReviewError) as bad:
        queue.decide(other.id, "bob", "relabel", ["weapon", "not-a-label"])
    assert bad.value.kind == "invalid_decision" and "not-a-label" in bad.value.message
    relabelled = queue.decide(other.id, "bob", "relabel", ["cat", "cat"])
    assert relabelled.labels == ["cat"]
    undone, item = queue.undo("bob")  # the latest one
    assert undone.id == relabelled.id and item.id == other.id and item.status == "pending" and item.claimed_by == "bob"
    assert [row["image"] for row in queue.export()] == [taken.reference]
    accepted = queue.decide(other.id, "bob", "accept")
    assert accepted.labels == other.tags
    with pytest.raises(ReviewError):
        queue.undo("carol")
    stats = queue.stats()
    assert stats["decided"] == 2 and stats["actions"] == {"accept": 1, "reject": 1} and stats["agreement"] == 0.5
    assert stats["reviewers"]["bob"]["decisions"] == 2
    queue.store.close()

    reopened = ReviewQueue(open_store(database))  # a restart: everything decided is still there
    rows = list(reopened.export())
    assert {r["image"] for r in rows} == {taken.reference, other.reference}
    for row in rows:
        source = taken if row["image"] == taken.reference else other
        assert row["weight"] == pytest.approx(1 / source.probability) and row["reviewer"] == "bob"
        assert row["stratum"] == source.stratum and row["taxonomy"] == "pol" and row["taxonomy_version"] == "3"
    assert reopened.stats()["decided"] == 2
    reopened.store.close()


def test_skip_puts_an_item_behind_the_others(database):
    queue, counts = filled(database, count=6, audit_rate=1.0)
    first = queue.claim("ann")
    queue.skip(first.id, "ann")
    seen = [queue.claim("ann").id for _ in range(counts["added"])]
    assert seen[-1] == first.id and len(set(seen)) == counts["added"]
    assert queue.claim("ann") is None
    queue.store.close()


# -- learning from reviews: weights in calibrate, export -> calibrate end to end ---------------------


def test_weighted_threshold_equals_the_unweighted_one_on_rows_repeated_weight_times():
    from zstagger.evaluation.calibrate import Target, choose_threshold

    rng = np.random.default_rng(3)
    for _ in range(20):
        scores = rng.random(60).round(2)  # ties included
        truth = rng.random(60) < scores
        weights = rng.integers(1, 6, 60)
        for target in (Target("precision", 0.8), Target("recall", 0.7), Target("f1")):
            assert choose_threshold(scores, truth, target, weights.astype(float)) == choose_threshold(
                np.repeat(scores, weights), np.repeat(truth, weights), target)


def _synthetic_population(rng, n):
    """Scores and truth with a known chance of being right at each score: sigmoid(14 (s - 0.62))."""
    flagged = rng.random(n) < 0.12
    scores = np.where(flagged, rng.beta(7, 3, n), rng.beta(2, 7, n))
    return scores, rng.random(n) < 1 / (1 + np.exp(-14 * (scores - 0.62)))


def _irls(scores, truth, rounds=50):
    """Logistic regression by Newton's method, written out (an independent computation)."""
    x = np.column_stack([np.ones(len(scores)), scores])
    beta = np.zeros(2)
    for _ in range(rounds):
        p = 1 / (1 + np.exp(-x @ beta))
        beta = beta + np.linalg.solve(x.T @ (x * (p * (1 - p))[:, None]), x.T @ (truth - p))
    return beta


def test_fitted_curve_and_precision_equal_a_computation_written_out():
    from zstagger.evaluation.fitted import fit_correctness, fitted_curves

    rng = np.random.default_rng(5)
    scores, truth = _synthetic_population(rng, 400)
    curve = fit_correctness(scores, truth)
    assert [curve.intercept, curve.slope] == pytest.approx(_irls(scores, truth.astype(float)), rel=2e-2)
    weights = rng.integers(1, 50, 400).astype(float)
    thresholds, precision, recall = fitted_curves(curve, scores, weights)
    right = [w / (1 + np.exp(-(curve.intercept + curve.slope * s))) for s, w in zip(scores, weights)]
    for i in rng.choice(len(thresholds), 25, replace=False):
        above = [j for j, s in enumerate(scores) if s >= thresholds[i]]
        assert precision[i] == pytest.approx(sum(right[j] for j in above) / sum(weights[j] for j in above), rel=1e-9)
        assert recall[i] == pytest.approx(sum(right[j] for j in above) / sum(right), rel=1e-9)


def test_fitted_precision_from_300_reviewed_items_is_unbiased_and_steadier_than_counting():
    """Band + audit samples (``enqueue``'s default strata: 210 in the band, 90 from the rest) of a
    population whose truth is known: the precision claimed at the block threshold, fitted and
    counted, against the population's own (computed directly from its labels)."""
    from zstagger.evaluation.fitted import fit_correctness, fitted_curves

    rng = np.random.default_rng(11)
    review, block, n = 0.55, 0.75, 20000
    fitted, counted = [], []
    for _ in range(60):
        scores, truth = _synthetic_population(rng, n)
        band, blocked = (scores >= review) & (scores < block), scores >= block
        probability = np.where(band, 210 / band.sum(), 90 / (~band).sum())
        chosen = rng.random(n) < probability
        s, t, w = scores[chosen], truth[chosen], 1 / probability[chosen]
        if not t[s >= block].size:
            continue
        true = truth[blocked].mean()
        thresholds, precision, _ = fitted_curves(fit_correctness(s, t), s, w)  # over the reviewed items, as calibrate does
        claimed = precision[np.flatnonzero(thresholds >= block)[-1]]
        fitted.append(100 * (claimed - true))
        counted.append(100 * ((w * t)[s >= block].sum() / w[s >= block].sum() - true))
    fitted, counted = np.asarray(fitted), np.asarray(counted)
    assert len(fitted) > 50
    assert abs(fitted.mean()) < 3 * fitted.std() / np.sqrt(len(fitted))  # unbiased
    assert fitted.std() < 0.6 * counted.std()


def test_review_export_feeds_calibrate_with_weights(tiny_model_dir, tmp_path):
    from harness import run_cli

    from zstagger.evaluation import calibrate
    from zstagger.synthetic import labelled_image
    from zstagger.tagger import Tagger

    policy = Taxonomy.parse({"name": "shapes", "mode": "multi", "default_threshold": 0.45, "negatives": ["clutter"],
                             "labels": [{"name": "alpha", "threshold": 0.55, "action": "block"},
                                        {"name": "bravo", "threshold": 0.55, "action": "review"}]}, source="test")
    images = tmp_path / "images"
    images.mkdir()
    truth = {}
    for i in range(60):
        present = [j for j in (0, 1) if (i >> j) & 1]
        path = images / f"{i:03d}.png"
        labelled_image(present, seed=700 + i, size=(64, 48)).save(path)
        truth[str(path)] = [("alpha", "bravo")[j] for j in present]
    with Tagger(str(tiny_model_dir), device="cpu", precision="fp32", image_cache=False) as tagger:
        lines = [r.to_json() for r in tagger.tag(sorted(truth), policy)]
        store = f"sqlite:///{tmp_path / 'store.db'}"
        queue = ReviewQueue(open_store(store))
        counts = queue.enqueue(lines, Selection(default_bands(policy, overrides={"alpha": (0.0, 0.5)}), audit_rate=0.5, seed="x"))
        assert counts["band"] and counts["audit"]
        while (item := queue.claim("ann")) is not None:
            queue.decide(item.id, "ann", "relabel", truth[item.reference])
        queue.store.close()
        manifest = tmp_path / "decisions.jsonl"
        exported = run_cli("review", "export", "-o", str(manifest), "--store", store)
        assert exported.returncode == 0, exported.stderr
        rows = [json.loads(x) for x in manifest.read_text().splitlines()]
        assert len(rows) == counts["added"] and {r["weight"] for r in rows} == {1.0, 2.0}
        assert all(r["labels"] == truth[r["image"]] for r in rows)
        stats = json.loads(run_cli("review", "stats", "--store", store).stdout)
        assert stats["decided"] == counts["added"] and stats["pending"] == 0 and stats["reviewers"]["ann"]["decisions"] == len(rows)
        report = calibrate(manifest, policy, objective="f1", min_positives=2, folds=2, tagger=tagger)
    assert any("inverse-probability weighted" in w and "fitted" in w for w in report.warnings)
    assert all((r.estimated_precision is not None) == (r.status == "calibrated") for r in report.labels)
    # the held-out figures count audit images twice: their n is the weighted count of predictions/positives
    alpha = next(label for label in report.labels if label.label == "alpha")
    positives = sum(r["weight"] for r in rows if "alpha" in r["labels"])
    assert alpha.held_out_recall.n == int(positives)


# -- enqueue --from-store: the store's images re-scored, chosen by stratum ---------------------------


SHAPES = """
name: shapes
mode: multi
version: "1"
default_threshold: 0.45
negatives: [clutter]
labels:
  - {name: alpha, threshold: 0.55, action: block}
  - {name: bravo, threshold: 0.55, action: review}
"""


def _band_between(values, share=0.5):
    """A band [low, high) holding about ``share`` of ``values``, its edges in the widest gaps
    (so that fp16 storage cannot move a score across one)."""
    v = np.sort(np.asarray(values))
    gaps = np.diff(v)
    start = int(len(v) * (1 - share) / 2)
    low_i = start + int(np.argmax(gaps[start:start + 4]))
    high_i = low_i + int(len(v) * share) + int(np.argmax(gaps[low_i + int(len(v) * share):][:4]))
    return (v[low_i] + v[low_i + 1]) / 2, (v[high_i] + v[high_i + 1]) / 2


def test_enqueue_from_the_store_picks_what_choose_picks_from_the_tagged_results(database, tiny_model_dir, tmp_path):
    from harness import run_cli

    from zstagger.settings import Settings
    from zstagger.synthetic import labelled_image
    from zstagger.tagger import Tagger

    (tmp_path / "shapes.yaml").write_text(SHAPES)
    import yaml

    spec = Taxonomy.parse(yaml.safe_load(SHAPES), source="test")
    paths = []
    for i in range(40):
        path = tmp_path / f"{i:03d}.png"
        labelled_image([j for j in (0, 1) if (i >> j) & 1], seed=900 + i, size=(64, 48)).save(path)
        paths.append(str(path))
    init = run_cli("store", "init", env={"ZSTAGGER_STORE": database})  # PostgreSQL's tables are made by an operator
    assert init.returncode == 0, init.stderr
    job = hashlib.md5(str(tmp_path).encode()).hexdigest()  # the PostgreSQL store is shared by this module's tests: scope by job
    settings = Settings(store=database, model=str(tiny_model_dir), precision="fp32", cache_dir=str(tmp_path / "cache"))
    with Tagger(settings=settings) as tagger:
        results = [json.loads(r.to_json()) for r in tagger.tag(paths[:30], spec, job_id=job)]
        tagger.tag(paths[30:], spec)  # in the store, not in the job: never picked
    alpha = [next(e["score"] for e in r["scores"] if e["label"] == "alpha") for r in results]
    low, high = _band_between(alpha)
    selection = Selection(default_bands(spec, overrides={"alpha": (low, high)}), audit_rate=0.5, seed="s")
    expected = {r["image"]: choose({e["label"]: e["score"] for e in r["scores"]}, r["tags"], selection, job, r["image"])
                for r in results}
    expected = {k: v for k, v in expected.items() if v is not None}
    assert {v[0] for v in expected.values()} == {"band", "audit"}

    args = ["review", "enqueue", "-t", str(tmp_path / "shapes.yaml"), "--from-store", "--store-job", job,
            "--band", f"alpha={low}:{high}", "--audit-rate", "0.5", "--seed", "s", "--model", str(tiny_model_dir),
            "--store", database]
    done = run_cli(*args, env={"ZSTAGGER_PRECISION": "fp32", "ZSTAGGER_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)
    assert counts["seen"] == 30 and counts["added"] == len(expected) and counts["errors"] == 0
    queue = ReviewQueue(open_store(database))
    items = []
    while (item := queue.claim("ann")) is not None:
        items.append(item)
    got = {i.reference: (i.stratum, i.probability, i.label) for i in items}
    assert got == expected
    scores = {r["image"]: {e["label"]: e["score"] for e in r["scores"]} for r in results}
    assert all(i.job_id == job and i.score == pytest.approx(scores[i.reference][i.label], abs=2e-3) for i in items)
    again = run_cli(*args, env={"ZSTAGGER_PRECISION": "fp32", "ZSTAGGER_CACHE_DIR": str(tmp_path / "cache")})
    assert again.returncode == 0 and json.loads(again.stdout)["added"] == 0  # the same choice: nothing new
    queue.store.close()


# -- reviewed decisions -> calibrate -> new thresholds -> diff, with the real CLI ----------------------


def test_decisions_calibrate_with_weights_and_diff_shows_what_the_new_thresholds_flip(tiny_model_dir, tmp_path):
    import yaml
    from harness import run_cli

    from zstagger.synthetic import labelled_image

    store = f"sqlite:///{tmp_path / 'store.db'}"
    env = {"ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_PRECISION": "fp32", "ZSTAGGER_CACHE_DIR": str(tmp_path / "cache"),
           "ZSTAGGER_STORE": store, "ZSTAGGER_TAXONOMY_PATH": str(tmp_path / "tax")}
    (tmp_path / "tax").mkdir()
    (tmp_path / "tax" / "shapes.yaml").write_text(SHAPES)
    truth, paths = {}, []
    for i in range(60):
        present = [j for j in (0, 1) if (i >> j) & 1]
        path = tmp_path / "images" / f"{i:03d}.png"
        path.parent.mkdir(exist_ok=True)
        labelled_image(present, seed=700 + i, size=(64, 48)).save(path)
        paths.append(str(path))
        truth[str(path)] = [("alpha", "bravo")[j] for j in present]
    tagged = run_cli("tag", *paths, "-t", "shapes", "--format", "jsonl", env=env)
    assert tagged.returncode == 0, tagged.stderr
    (tmp_path / "results.jsonl").write_text(tagged.stdout)
    alpha = [next(e["score"] for e in json.loads(x)["scores"] if e["label"] == "alpha") for x in tagged.stdout.splitlines()]
    low, high = _band_between(alpha)

    enqueued = run_cli("review", "enqueue", "-t", "shapes", "--results", str(tmp_path / "results.jsonl"),
                       "--band", f"alpha={low}:{high}", "--audit-rate", "0.5", "--seed", "d", env=env)
    assert enqueued.returncode == 0, enqueued.stderr
    queue = ReviewQueue(open_store(store))
    while (item := queue.claim("ann")) is not None:  # people say what is in each image
        queue.decide(item.id, "ann", "relabel", truth[item.reference])
    queue.store.close()
    assert run_cli("review", "export", "-o", str(tmp_path / "decisions.jsonl"), env=env).returncode == 0

    calibrated = run_cli("calibrate", str(tmp_path / "decisions.jsonl"), "-t", "shapes", "--objective", "f1",
                         "--min-positives", "2", "--folds", "2", "--name", "shapes-next", "-o", str(tmp_path / "tax" / "next.yaml"),
                         "--json", env=env)
    assert calibrated.returncode == 0, calibrated.stderr
    report = json.loads(calibrated.stdout)
    assert any("fitted P(true | score)" in w for w in report["warnings"])
    new = {label["name"]: label["threshold"] for label in yaml.safe_load((tmp_path / "tax" / "next.yaml").read_text())["labels"]}
    assert new != {"alpha": 0.55, "bravo": 0.55}

    diffed = run_cli("diff", "--old", "shapes", "--new", "shapes-next", "--json", env=env)
    assert diffed.returncode == 0, diffed.stderr
    d = json.loads(diffed.stdout)
    # what diff says flips, against the scores `tag` printed put against each taxonomy's thresholds; diff
    # re-scores the stored (fp16) embeddings, so an image within 2e-3 of a new threshold may go either way
    results = [json.loads(x) for x in tagged.stdout.splitlines()]
    old = {"alpha": 0.55, "bravo": 0.55}
    scores = [{e["label"]: e["score"] for e in r["scores"]} for r in results]
    assert [sorted(r["tags"]) for r in results] == [sorted(k for k, v in sc.items() if v >= old[k]) for sc in scores]
    before = [{k for k, v in sc.items() if v >= old[k]} for sc in scores]
    after = [{k for k, v in sc.items() if v >= new[k]} for sc in scores]
    unsure = sum(any(abs(v - new[k]) < 2e-3 for k, v in sc.items()) for sc in scores)
    assert d["images"] == len(paths) and unsure <= 6  # (the tiny model's scores lie close together)

    def verdict(tags):
        return "block" if "alpha" in tags else "review" if "bravo" in tags else "allow"

    flipped = sum(a != b for a, b in zip(before, after))
    assert flipped > 0 and abs(d["changed_tags"] - flipped) <= unsure
    assert abs(d["changed_verdict"] - sum(verdict(a) != verdict(b) for a, b in zip(before, after))) <= unsure
    for change in d["labels"]:
        label = change["label"]
        assert abs(change["newly_tagged"] - sum(label in b and label not in a for a, b in zip(before, after))) <= unsure
        assert abs(change["no_longer_tagged"] - sum(label in a and label not in b for a, b in zip(before, after))) <= unsure
