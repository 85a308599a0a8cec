"""Several taxonomies in one pass: every image read and encoded once, scored against each
taxonomy, one result line per image holding each taxonomy's result under its name, each the
very record a run with that taxonomy alone writes. Python API, CLI, queue worker and HTTP API,
stills and media, and the image cache (one embedding per image whatever the taxonomy count).

The encoder is counted by wrapping the real model's methods (they still run): how many images
it preprocessed and encoded, against how many a run with one taxonomy needs.
"""

import base64
import io
import json
import re

import httpx
import pytest

from harness import ApiServer, run_cli, worker_starter
from zstagger import ConfigurationError, MultiTagResult, Taxonomy, TagResult
from zstagger.settings import Settings
from zstagger.tagger import Tagger
from zstagger.testing import sample_image

TAXONOMIES = ["moderation", "ecommerce"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi-images")
    paths = []
    for i in range(7):
        path = root / f"p{i}.{'png' if i % 2 else 'jpg'}"
        sample_image(10 + i, (70 + 3 * i, 50 + i)).save(path)
        paths.append(str(path))
    (root / "broken.jpg").write_bytes(b"not an image")
    return paths + [str(root / "broken.jpg"), str(root / "missing.jpg")]


@pytest.fixture(scope="module")
def tagger(tiny_model_dir, tmp_path_factory):
    settings = Settings(cache_dir=str(tmp_path_factory.mktemp("cache")))
    with Tagger(str(tiny_model_dir), device="cpu", precision="fp32", batch_size=4, settings=settings) as tagger:
        yield tagger


def counted(tagger, monkeypatch):
    """Count what the real encoder is asked to do: images preprocessed, images encoded."""
    encoder = tagger.encoder
    seen = {"preprocessed": 0, "encoded": 0}
    preprocess, encode = encoder.preprocess, encoder.encode_images

    def count_preprocess(image, *args, **kwargs):
        seen["preprocessed"] += 1
        return preprocess(image, *args, **kwargs)

    def count_encode(pixels):
        seen["encoded"] += len(pixels)
        return encode(pixels)

    monkeypatch.setattr(encoder, "preprocess", count_preprocess)
    monkeypatch.setattr(encoder, "encode_images", count_encode)
    return seen


def colours_spec():
    """A third kind of taxonomy: multi-label with its own negatives (contrastive scoring)."""
    return Taxonomy.parse({"name": "colours", "mode": "multi", "negatives": ["a grey photo"],
                           "labels": [{"name": "red"}, {"name": "green"}, {"name": "blue", "threshold": 0.4}]})


def test_python_results_equal_separate_runs_and_each_image_is_encoded_once(tagger, images, monkeypatch, tmp_path):
    specs = [*TAXONOMIES, colours_spec()]
    alone = {getattr(spec, "name", spec): [r.to_json() for r in tagger.tag(images, spec, top_k=5)] for spec in specs}
    seen = counted(tagger, monkeypatch)
    together = tagger.tag(images, taxonomies=specs, top_k=5)
    readable = len(images) - 2
    assert seen == {"preprocessed": readable, "encoded": readable}  # once per image, not once per taxonomy

    assert [r.image for r in together] == [r.image for r in tagger.tag(images, "moderation")]
    for i, result in enumerate(together):
        assert isinstance(result, MultiTagResult) and list(result.taxonomies) == ["moderation", "ecommerce", "colours"]
        line = json.loads(result.to_json())
        assert list(line) == ["image", "taxonomies"]
        for name, runs in alone.items():
            assert result[name].to_json() == runs[i]  # byte for byte what that taxonomy alone writes
            assert line["taxonomies"][name] == json.loads(runs[i])
    assert together[-2].error.type == "invalid_image" and together[-1].error.type == "not_found"
    assert together[0].error is None and together[0].ok
    assert MultiTagResult.from_json(together[0].to_json()) == together[0]


def test_taxonomies_are_checked_before_any_image_is_read(tagger, images):
    with pytest.raises(ConfigurationError, match="'moderation' is given twice"):
        tagger.tag(images, taxonomies=["moderation", "moderation"])
    with pytest.raises(ConfigurationError, match="alone, not with taxonomy"):
        tagger.tag(images, "moderation", taxonomies=["ecommerce"])
    with pytest.raises(ConfigurationError, match="a list of one or more"):
        tagger.tag(images, taxonomies=[])
    with pytest.raises(ConfigurationError, match="a list of one or more"):
        tagger.tag(images, taxonomies="moderation")


def test_the_image_cache_keeps_one_embedding_per_image_whatever_the_taxonomy_count(tiny_model_dir, images, tmp_path):
    settings = Settings(cache_dir=str(tmp_path / "cache"))
    readable = len(images) - 2
    with Tagger(str(tiny_model_dir), device="cpu", precision="fp32", settings=settings, image_cache=True) as tagger:
        first = tagger.tag(images, taxonomies=TAXONOMIES)
        assert tagger.cache_stats() == {"hits": 0, "misses": readable}  # one embedding per image, not two
        again = tagger.tag(images, taxonomies=TAXONOMIES)
        assert tagger.cache_stats() == {"hits": readable, "misses": readable}
        alone = tagger.tag(images, "ecommerce")
        assert tagger.cache_stats()["misses"] == readable  # the single-taxonomy run finds them all
    assert [r.to_json() for r in again] == [r.to_json() for r in first]
    assert [r["ecommerce"].to_json() for r in first] == [r.to_json() for r in alone]


def test_media_are_decoded_and_embedded_once_and_judged_as_alone(tagger, tmp_path, monkeypatch):
    pytest.importorskip("av")
    from test_media import SIZE, video, write_spec  # the media tests' clips and taxonomy

    from zstagger.synthetic import labelled_image

    spec_root = tmp_path / "spec"
    for kind, make in (("banned", lambda i: labelled_image([0], seed=1000 + i, size=SIZE)),
                       ("safe", lambda i: labelled_image([], seed=2000 + i, size=SIZE))):
        (spec_root / "ex" / kind).mkdir(parents=True)
        for i in range(6):
            make(i).save(spec_root / "ex" / kind / f"{i}.png")
    early = write_spec(spec_root, "media-early")  # stops once banned fires twice
    patient = write_spec(spec_root, "media-all", media={"early_exit_frames": 0})
    clip = str(video(tmp_path / "late.mp4", seconds=12, flagged=[(2.0, 12.0)]))
    clean = str(video(tmp_path / "clean.mp4", seconds=4))
    photo = tmp_path / "photo.png"
    sample_image(5).save(photo)
    inputs = [clip, str(photo), clean]

    tagger.classifier(early), tagger.classifier(patient)  # their example images: embedded once, now
    seen = counted(tagger, monkeypatch)
    alone_all = tagger.tag(inputs, patient, frames=True)
    frames_alone = seen["encoded"]
    alone_early = tagger.tag(inputs, early, frames=True)
    seen["encoded"] = 0
    together = tagger.tag(inputs, taxonomies=[early, patient], frames=True)
    assert seen["encoded"] == frames_alone  # every frame embedded once, for both taxonomies

    assert alone_early[0].media.stopped_early and not alone_all[0].media.stopped_early
    for result, one_early, one_all in zip(together, alone_early, alone_all):
        assert result["media-all"].to_json() == one_all.to_json()
        got, want = result["media-early"], one_early
        if want.media is not None and want.media.stopped_early:
            # How far decoding ran ahead of scoring when it stopped is a matter of timing, alone or not.
            got = got.model_copy(update={"media": got.media.model_copy(update={"frames_decoded": 0, "duration": None})})
            want = want.model_copy(update={"media": want.media.model_copy(update={"frames_decoded": 0, "duration": None})})
            assert result["media-early"].media.frames_decoded < alone_all[0].media.frames_decoded
        assert got.to_json() == want.to_json()


# -- the CLI ------------------------------------------------------------------------------------


def test_cli_several_taxonomies_equal_separate_runs_and_one_keeps_todays_shape(tiny_model_dir, images, tagger):
    env = {"ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_PRECISION": "fp32"}
    both = run_cli("tag", *images, "-t", "moderation", "-t", "ecommerce", "--format", "jsonl", env=env)
    assert both.returncode == 1, both.stderr  # two inputs cannot be read
    assert "2 of 9 inputs could not be tagged" in both.stderr
    lines = [json.loads(line) for line in both.stdout.splitlines()]
    for name in TAXONOMIES:
        one = run_cli("tag", *images, "-t", name, "--format", "jsonl", env=env)
        assert one.returncode == 1
        single = [json.loads(line) for line in one.stdout.splitlines()]
        assert all("taxonomies" not in line and line["taxonomy"] == name for line in single)  # today's shape
        assert [line["taxonomies"][name] for line in lines] == single
        # and today's records exactly, as the Python API writes them
        assert one.stdout.splitlines() == [r.to_json() for r in tagger.tag(images, name)]
    assert [line["image"] for line in lines] == images

    table = run_cli("tag", images[0], "-t", "moderation", "-t", "ecommerce", "--format", "table", env=env)
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith(images[0]) and "[moderation]" in table.stdout and "[ecommerce]" in table.stdout


@pytest.mark.parametrize("args, words", [
    (("-t", "moderation", "-t", "moderation"), "a taxonomy is given twice"),
    (("-t", "moderation", "-t", "ecommerce", "--labels", "a,b"), "several -t/--taxonomy go without --labels"),
    (("-t", "moderation", "-t", "nope"), "unknown taxonomy 'nope'"),
])
def test_cli_refuses_bad_taxonomy_lists_before_loading_the_model(images, args, words):
    done = run_cli("tag", images[0], *args, env={"ZSTAGGER_MODEL": "/nonexistent"})
    assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr
    assert "nonexistent" not in done.stderr  # refused before the (missing) model was looked for


# -- the queue: a real redis-server and `zstagger worker` ------------------------------------------


def test_worker_results_equal_separate_jobs(redis_server, tiny_model_dir, images, tmp_path):
    env = {"ZSTAGGER_REDIS_URL": redis_server.url, "ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_PRECISION": "fp32"}
    with worker_starter(env, tmp_path) as start:
        start("multi").wait_ready()

        def job(*taxonomy_args):
            enqueued = run_cli("enqueue", *images, *taxonomy_args, "--chunk-size", "4", env=env)
            assert enqueued.returncode == 0, enqueued.stderr
            got = run_cli("results", enqueued.stdout.strip(), "--wait", "--timeout", "120", env=env)
            assert got.returncode == 1, got.stderr  # the two unreadable inputs
            return [json.loads(line) for line in got.stdout.splitlines()]

        together = job("-t", "moderation", "-t", "ecommerce")
        assert [line["image"] for line in together] == images
        for name in TAXONOMIES:
            assert [line["taxonomies"][name] for line in together] == job("-t", name)

    from zstagger.queue.client import Job
    from zstagger.queue.messages import ChunkRequest

    chunk = ChunkRequest.from_message(("a" * 32, [[0, "/x.jpg", "a title"]], [{"name": "x", "labels": [{"name": "y"}]}]), {})
    assert chunk.specs[0]["name"] == "x" and chunk.wire_items() == [[0, "/x.jpg", "a title"]]
    assert Job  # the producer reads both shapes back (read_result)


# -- the HTTP API: a real `zstagger serve` -----------------------------------------------------------


def png(seed):
    buf = io.BytesIO()
    sample_image(seed, (80, 60)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def encoded_images(api):
    """How many images the server's model has encoded so far (the sum of its batch sizes)."""
    text = httpx.get(api.url + "/metrics", headers={"Authorization": "Bearer zst_multi-key"}, timeout=10).text
    return float(re.search(r"^zstagger_http_batch_size_sum (\S+)$", text, re.M).group(1))


def test_http_results_equal_separate_requests_and_each_image_is_encoded_once(tiny_model_dir, tmp_path):
    from zstagger.service.auth import hash_key

    env = {"ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_PRECISION": "fp32", "ZSTAGGER_API_KEYS": hash_key("zst_multi-key"),
           "ZSTAGGER_BATCH_WAIT_MS": "5"}
    api = ApiServer(env, tmp_path).wait_ready()
    headers = {"Authorization": "Bearer zst_multi-key"}
    try:
        for seed in (1, 2):  # one image a request: the same one-image batch every time, so the same bits
            image = {"base64": png(seed), "name": f"img{seed}.png"}
            before = encoded_images(api)
            both = httpx.post(api.url + "/v1/tag", json={"images": [image], "taxonomies": TAXONOMIES}, headers=headers,
                              timeout=60)
            assert both.status_code == 200, both.text
            assert encoded_images(api) - before == 1  # encoded once for both taxonomies
            result = both.json()["results"][0]
            assert list(result) == ["image", "taxonomies"] and result["image"] == f"img{seed}.png"
            for name in TAXONOMIES:
                alone = httpx.post(api.url + "/v1/tag", json={"images": [image], "taxonomy": name}, headers=headers, timeout=60)
                assert result["taxonomies"][name] == alone.json()["results"][0]
        bad = httpx.post(api.url + "/v1/tag", json={"images": [{"base64": png(1)}], "taxonomies": ["moderation"],
                                                    "taxonomy": "ecommerce"}, headers=headers, timeout=30)
        assert bad.status_code == 400 and "taxonomies alone" in bad.json()["error"]["message"]
        twice = httpx.post(api.url + "/v1/tag", json={"images": [{"base64": png(1)}], "taxonomies": ["moderation"] * 2},
                           headers=headers, timeout=30)
        assert twice.status_code == 400 and "given twice" in twice.json()["error"]["message"]
        form = httpx.post(api.url + "/v1/tag", files=[("images", ("f.png", base64.b64decode(png(3))))],
                          data={"taxonomies": "moderation,ecommerce"}, headers=headers, timeout=60)
        assert form.status_code == 200 and list(form.json()["results"][0]["taxonomies"]) == TAXONOMIES
    finally:
        assert api.stop() in (0, -15)
    assert "Traceback" not in api.log_path.read_text()


def test_multi_result_reads_back_from_its_json():
    one = TagResult(image="a.jpg", taxonomy="x", tags=["y"])
    multi = MultiTagResult(image="a.jpg", taxonomies={"x": one, "z": one.model_copy(update={"taxonomy": "z"})})
    from zstagger.results import read_result

    assert read_result(multi.to_json()) == multi and read_result(one.to_json()) == one
    assert multi.error is None and multi["z"].taxonomy == "z"
