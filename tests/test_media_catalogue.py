"""Animations and videos in the embedding store: the frames judged are kept, so that retag and
diff judge them again under another taxonomy without decoding, and give what a fresh tag gives.

Real encoded media (PyAV's H.264, Pillow's GIF) on the tiny model; every "fresh" result comes
from a tagger whose own store is empty, so it decodes; the files are deleted before the
catalogue is judged again, so nothing can decode them.
"""

import json

import pytest
from harness import run_cli
from test_media import animation, clutter, pattern, video, write_spec

from zstagger.catalogue import ReadOnly, diff_policies, open_catalogue, retag
from zstagger.settings import Settings
from zstagger.store import open_store
from zstagger.tagger import Tagger

pytest.importorskip("av")


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    from test_media import SIZE
    from zstagger.synthetic import labelled_image

    root = tmp_path_factory.mktemp("media-store-spec")
    for kind, make in (("banned", lambda i: labelled_image([0], seed=1000 + i, size=SIZE)),
                       ("safe", lambda i: labelled_image([], seed=2000 + i, size=SIZE))):
        (root / "ex" / kind).mkdir(parents=True)
        for i in range(6):
            make(i).save(root / "ex" / kind / f"{i}.png")
    return {
        "early": write_spec(root, "store-early"),  # stops at the second (video) or first (animation) firing frame
        "patient": write_spec(root, "store-patient", media={"early_exit_frames": 0}),
        "two_frames": write_spec(root, "store-two", media={"early_exit_frames": 0, "min_frames": 2}),
        "top_k": write_spec(root, "store-topk", media={"early_exit_frames": 0, "aggregation": "mean_top_k", "top_k": 3}),
    }


def make_media(folder):
    folder.mkdir()
    frames = [clutter(i) for i in range(10)]
    frames[6] = pattern(1)
    (folder / "moving.gif").write_bytes(animation(frames))
    video(folder / "stretch.mp4", seconds=10, flagged=[(4.0, 6.0)])
    video(folder / "late.mp4", seconds=12, flagged=[(3.0, 12.0)])
    video(folder / "clean.mp4", seconds=4)
    clutter(50).save(folder / "still.png")
    return [str(folder / n) for n in ("moving.gif", "stretch.mp4", "still.png", "late.mp4", "clean.mp4")]


def tagger_with_store(model, tmp_path, name):
    settings = Settings(store=f"sqlite:///{tmp_path / name}.db", cache_dir=str(tmp_path / "cache"), precision="fp32")
    return Tagger(str(model), device="cpu", batch_size=8, settings=settings)


def comparable(result):
    data = result.model_dump(mode="json")
    data["provenance"].pop("source")  # "store" for a re-judged result, "image" for a fresh one
    if result.media is not None and result.media.stopped_early:
        # How far the decoder ran ahead of the judge before it was stopped varies from run to run.
        data["media"].pop("frames_decoded")
        data["media"].pop("duration")
    return data


def test_retag_of_stored_media_equals_a_fresh_tag_without_decoding(tmp_path, tiny_model_dir, specs):
    files = make_media(tmp_path / "media")
    with tagger_with_store(tiny_model_dir, tmp_path, "catalogue") as tagger:
        recorded = tagger.tag(files, specs["patient"])
    assert [r.verdict for r in recorded] == ["block", "block", "allow", "block", "allow"], recorded
    fresh = {}
    for name, spec in specs.items():  # each with an empty store of its own: decoded afresh
        with tagger_with_store(tiny_model_dir, tmp_path, f"fresh-{name}") as fresh_tagger:
            fresh[name] = fresh_tagger.tag(files, spec)
    assert fresh["early"][3].media.stopped_early and fresh["two_frames"][0].verdict == "allow"
    for path in files:  # nothing left to decode
        (tmp_path / "media" / path.rsplit("/", 1)[1]).unlink()

    store = open_store(f"sqlite:///{tmp_path / 'catalogue'}.db", create=False)
    settings = Settings(store=store.url, cache_dir=str(tmp_path / "cache"), precision="fp32")
    with Tagger(str(tiny_model_dir), device="cpu", settings=settings, image_cache=ReadOnly(store)) as reader:
        catalogue = open_catalogue(store, reader)
        assert catalogue.count() == 5
        for name, spec in specs.items():
            again = list(retag(catalogue, spec))
            assert [r.image for r in again] == files  # store order: the order they were tagged in
            assert all(r.provenance.source == "store" for r in again)
            for got, want in zip(again, fresh[name]):
                assert comparable(got) == comparable(want), (name, got.image)


def test_the_cli_retag_and_diff_read_stored_media(tmp_path, tiny_model_dir, specs):
    files = make_media(tmp_path / "media")
    env = {"ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_PRECISION": "fp32", "ZSTAGGER_CACHE_DIR": str(tmp_path / "cache"),
           "ZSTAGGER_STORE": f"sqlite:///{tmp_path}/store.db", "ZSTAGGER_TAXONOMY_PATH": str(specs["patient"].images_base())}
    tagged = run_cli("tag", *files, "-t", "store-patient", "--format", "jsonl", env=env)
    assert tagged.returncode == 0, tagged.stderr
    for path in files:
        (tmp_path / "media" / path.rsplit("/", 1)[1]).unlink()
    again = run_cli("retag", "-t", "store-patient", env=env)
    assert again.returncode == 0, again.stderr
    want = [json.loads(line) for line in tagged.stdout.splitlines()]
    got = [json.loads(line) for line in again.stdout.splitlines()]
    for line in want + got:
        line["provenance"].pop("source")
    assert got == want
    changed = run_cli("diff", "--old", "store-patient", "--new", "store-two", "--json", env=env)
    assert changed.returncode == 0, changed.stderr
    report = json.loads(changed.stdout)
    # Needing two firing frames unblocks the GIF (one flagged frame) and nothing else.
    assert report["images"] == 5 and report["changed_verdict"] == 1 and report["media_incomplete"] == 0
    assert [s["image"] for s in report["samples"]["block -> allow"]] == [files[0]]


def test_media_stored_from_an_early_stop_are_judged_again_only_as_far_as_they_go(tmp_path, tiny_model_dir, specs):
    files = make_media(tmp_path / "media")
    with tagger_with_store(tiny_model_dir, tmp_path, "early") as tagger:
        first = tagger.tag(files, specs["early"])
        assert first[3].media.stopped_early and first[0].media.stopped_early
        again = tagger.tag(files, specs["early"])  # the same rules: judged from the store, nothing decoded
        assert tagger.cache_stats()["hits"] >= 4
        assert [comparable(r) for r in again] == [comparable(r) for r in first]
    store = open_store(f"sqlite:///{tmp_path / 'early'}.db", create=False)
    with Tagger(str(tiny_model_dir), device="cpu", settings=Settings(cache_dir=str(tmp_path / "cache"), precision="fp32"),
                image_cache=ReadOnly(store)) as reader:
        catalogue = open_catalogue(store, reader)
        patient = {r.image: r for r in retag(catalogue, specs["patient"])}
        # The blocked ones were stopped early: judging them to the end needs their frames again.
        for path in (files[0], files[1], files[3]):
            assert patient[path].error.type == "media_incomplete" and "tag the file again" in patient[path].error.message
        assert patient[files[4]].ok and patient[files[2]].ok  # the clean video was judged to its end
        report = diff_policies(catalogue, specs["early"], specs["patient"])
        assert report.media_incomplete == 3 and report.images == 2


def test_postgresql_keeps_media_too_and_forgetting_them_erases_their_frames(tmp_path, tiny_model_dir, specs, postgres):
    import psycopg

    with psycopg.connect(postgres.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute("CREATE DATABASE media_store")
    url = postgres.url.rsplit("/", 1)[0] + "/media_store"
    open_store(url).migrate()
    files = make_media(tmp_path / "media")
    settings = Settings(store=url, cache_dir=str(tmp_path / "cache"), precision="fp32")
    with Tagger(str(tiny_model_dir), device="cpu", settings=settings) as tagger:
        recorded = tagger.tag(files, specs["patient"])
    store = open_store(url)
    with Tagger(str(tiny_model_dir), device="cpu", settings=settings, image_cache=ReadOnly(store)) as reader:
        again = list(retag(open_catalogue(store, reader), specs["patient"]))
        assert [comparable(r) for r in again] == [comparable(r) for r in recorded]
        erased = store.forget(references=[files[1]])
        assert erased.images == 1 and erased.embeddings == 1  # the video's frames went with it
        assert [r.image for r in retag(open_catalogue(store, reader), specs["patient"])] == [f for f in files if f != files[1]]
