"""Built runtimes: OpenVINO build (fp32, int8 with NNCF), use through the Tagger and the CLI, the
qualification gate, cache keys, provenance, and a torch-free start.

All on the tiny random checkpoint: its int8 build disagrees with the source model on a few
percent of decisions (random weights), so tests that need an int8 build to pass
qualification lower the limits (settings) rather than the gate's defaults.
"""

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from zstagger.errors import ConfigurationError, ModelLoadError  # noqa: E402
from zstagger.runtimes import load_encoder, model_fingerprint, read_manifest  # noqa: E402
from zstagger.runtimes.build import build_runtime  # noqa: E402
from zstagger.runtimes.manifest import MANIFEST_NAME  # noqa: E402
from zstagger.settings import Settings  # noqa: E402
from zstagger.synthetic import labelled_image, sample_image  # noqa: E402
from zstagger.tagger import Tagger  # noqa: E402

LABELS = ["cat", "dog", "bird", "fish"]


def _command(*args):
    exe = shutil.which("zstagger")
    return [exe, *args] if exe else [sys.executable, "-m", "zstagger.cli", *args]


def _environ(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZSTAGGER_")}
    env.update(extra)
    return env


def zstagger(*args, **env):
    return subprocess.run(_command(*args), capture_output=True, text=True, env=_environ(**env), timeout=300)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Calibration images and another set to qualify on (synthetic shapes on clutter)."""
    root = tmp_path_factory.mktemp("runtime-images")
    for name, offset in (("calibration", 0), ("qualify", 1000)):
        (root / name).mkdir()
        for i in range(40):
            labelled_image([i % 5], offset + i, (160, 120)).save(root / name / f"{i:03d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def builds(tiny_model_dir, images, tmp_path_factory):
    root = tmp_path_factory.mktemp("builds")
    calibration = sorted(str(p) for p in (images / "calibration").iterdir())
    build_runtime(str(tiny_model_dir), root / "fp32", "fp32")
    build_runtime(str(tiny_model_dir), root / "int8", "int8", calibration)
    return root


@pytest.fixture
def cache(tmp_path, clean_env):
    clean_env.setenv("ZSTAGGER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def fresh_copy(source, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(source, target)
    return target


# -- build -------------------------------------------------------------------------------


def test_fp32_build_embeds_like_the_torch_model(builds, tiny_model_dir):
    from zstagger.engine.model import ClipEncoder

    torch_encoder = ClipEncoder.load(str(tiny_model_dir), device="cpu", precision="fp32")
    built = load_encoder(str(builds / "fp32"))
    pixels = np.stack([built.preprocess(sample_image(i, (90 + 7 * i, 70))) for i in range(5)])
    assert pixels.dtype == np.uint8 and pixels.shape == (5, 64, 64, 3)
    cos = (built.encode_images(pixels).numpy() * torch_encoder.encode_images(pixels).numpy()).sum(-1)
    assert cos.min() > 1 - 1e-4
    prompts = ["a photo of a cat", "x", "this is " + "very " * 120 + "long", "émoji 🐱 and ünïcode"]
    text_cos = (built.encode_text(prompts).numpy() * torch_encoder.encode_text(prompts).numpy()).sum(-1)
    assert text_cos.min() > 1 - 1e-4
    assert built.logit_scale == pytest.approx(torch_encoder.logit_scale)
    assert built.uses_sigmoid is torch_encoder.uses_sigmoid and built.logit_bias == torch_encoder.logit_bias


def test_a_siglip_build_keeps_its_padding_sigmoid_and_bias(tiny_siglip_dir, tmp_path):
    from zstagger.engine.model import ClipEncoder

    build_runtime(str(tiny_siglip_dir), tmp_path / "siglip", "fp32")
    torch_encoder, built = ClipEncoder.load(str(tiny_siglip_dir), device="cpu", precision="fp32"), load_encoder(str(tmp_path / "siglip"))
    assert built.manifest.text.padding == "max_length" and built.manifest.text.max_length == 64
    assert built.uses_sigmoid is True and built.logit_bias == pytest.approx(torch_encoder.logit_bias)
    pixels = np.stack([built.preprocess(sample_image(i, (100, 80))) for i in range(3)])
    assert (built.encode_images(pixels).numpy() * torch_encoder.encode_images(pixels).numpy()).sum(-1).min() > 1 - 1e-4
    prompts = ["a cat", "a photo of a dog"]
    assert (built.encode_text(prompts).numpy() * torch_encoder.encode_text(prompts).numpy()).sum(-1).min() > 1 - 1e-4


def test_manifest_describes_the_build(builds, tiny_model_dir, images):
    fp32, int8 = read_manifest(builds / "fp32"), read_manifest(builds / "int8")
    from zstagger.engine.locate import model_fingerprint as checkpoint_fingerprint

    for manifest in (fp32, int8):
        assert manifest.runtime == "openvino" and manifest.source.model == str(tiny_model_dir)
        assert manifest.source.fingerprint == checkpoint_fingerprint(str(tiny_model_dir))
        assert manifest.embedding_dim == 32 and manifest.preprocessing.crop == (64, 64)
        assert manifest.text.padding == "longest" and manifest.text.max_length == 77
        for name, digest in manifest.file_hashes.items():
            assert hashlib.sha256((builds / manifest.precision / name).read_bytes()).hexdigest() == digest
    assert fp32.precision == "fp32" and fp32.calibration is None
    assert int8.precision == "int8" and int8.calibration.count == 40
    digests = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in (images / "calibration").iterdir())
    assert int8.calibration.fingerprint == hashlib.sha256("\n".join(digests).encode()).hexdigest()


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_runtime_tokenizer_gives_the_ids_transformers_gives(kind, tiny_model_dir, tiny_siglip_dir, tmp_path):
    from zstagger.engine.model import ClipEncoder
    from zstagger.runtimes.build import _save_tokenizer
    from zstagger.runtimes.manifest import TextConfig
    from zstagger.runtimes.tokenizer import TextTokenizer

    model = str(tiny_model_dir if kind == "clip" else tiny_siglip_dir)
    encoder = ClipEncoder.load(model, device="cpu", precision="fp32")
    _save_tokenizer(model, tmp_path / "tokenizer.json")
    names = ["input_ids", "attention_mask"] if kind == "clip" else ["input_ids"]
    pad = encoder.tokenizer.pad_token_id if encoder.tokenizer.pad_token_id is not None else encoder.tokenizer.eos_token_id
    ours = TextTokenizer(tmp_path / "tokenizer.json", TextConfig(padding=encoder.text_padding, max_length=encoder.text_max_length,
                                                                  pad_id=pad, inputs=names))
    prompts = ["a photo of a cat.", "This is a photo of the thing.", "", "  spaces   and\ttabs ",
               "word " * 200, "ÜNÏCODE café 🐱", "another one"]
    for batch in (prompts, prompts[:2]):  # with a prompt over the limit, and short ones only (padding differs)
        theirs = encoder.tokenizer(batch, padding=encoder.text_padding, truncation=True, max_length=encoder.text_max_length,
                                   return_tensors="np")
        got = ours(batch)
        assert sorted(got) == sorted(names)
        for name in names:
            assert got[name].tolist() == theirs[name].tolist(), name


def test_int8_without_calibration_images_is_a_clear_error(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigurationError, match="int8 needs calibration images"):
        build_runtime(str(tiny_model_dir), tmp_path / "out", "int8")
    result = zstagger("runtime", "build", str(tiny_model_dir), "--precision", "int8", "-o", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "Error: int8 needs calibration images: pass --calibration DIR (a few dozen to a few hundred of your own images)"]
    assert not (tmp_path / "out").exists()


def test_build_refuses_to_write_over_a_directory_it_did_not_make(tiny_model_dir, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigurationError, match="is not empty"):
        build_runtime(str(tiny_model_dir), tmp_path / "out", "fp32", overwrite=True)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_a_damaged_manifest_is_one_clear_line(builds, tmp_path):
    broken = fresh_copy(builds / "fp32", tmp_path)
    manifest = json.loads((broken / MANIFEST_NAME).read_text())
    manifest["files"]["vision"] = "../../etc/passwd"
    (broken / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="not a valid runtime manifest") as info:
        load_encoder(str(broken))
    assert "\n" not in str(info.value)
    (broken / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ModelLoadError, match="not a valid runtime manifest"):
        load_encoder(str(broken))


# -- use ---------------------------------------------------------------------------------


def test_tagging_with_a_built_runtime_records_runtime_and_precision(builds, tiny_model_dir, cache):
    image = sample_image(3, (120, 90))
    with Tagger(str(builds / "fp32")) as built, Tagger(str(tiny_model_dir), device="cpu", precision="fp32") as torch_path:
        ours, theirs = built.tag([image], "moderation")[0], torch_path.tag([image], "moderation")[0]
    assert ours.provenance.runtime == "openvino" and ours.provenance.precision == "fp32"
    assert ours.provenance.unqualified is None and "unqualified" not in json.loads(ours.to_json())["provenance"]
    assert "runtime" not in json.loads(theirs.to_json())["provenance"]  # the torch path reads as before
    assert ours.provenance.model_fingerprint != theirs.provenance.model_fingerprint
    assert [s.label for s in ours.scores] == [s.label for s in theirs.scores]
    assert np.allclose([s.score for s in ours.scores], [s.score for s in theirs.scores], atol=2e-3)


def test_the_image_cache_never_mixes_runtimes(builds, tiny_model_dir, cache, tmp_path):
    path = tmp_path / "one.jpg"
    sample_image(5, (120, 90)).save(path)
    fingerprints = {model_fingerprint(str(tiny_model_dir)), model_fingerprint(str(builds / "fp32")),
                    model_fingerprint(str(builds / "int8"))}
    assert len(fingerprints) == 3
    settings = Settings(allow_unqualified_runtime=True)
    for model in (str(tiny_model_dir), str(builds / "fp32"), str(builds / "int8")):
        with Tagger(model, image_cache=True, settings=settings) as tagger:
            tagger.tag([str(path)], "moderation")
            assert tagger.cache_stats() == {"hits": 0, "misses": 1}, model  # never another runtime's vector
        with Tagger(model, image_cache=True, settings=settings) as tagger:
            tagger.tag([str(path)], "moderation")
            assert tagger.cache_stats() == {"hits": 1, "misses": 0}, model


def test_lanes_run_side_by_side_and_agree(builds):
    images = [sample_image(i, (100, 80)) for i in range(10)]
    with Tagger(str(builds / "fp32"), lanes=1, batch_size=2, image_cache=False) as one, \
            Tagger(str(builds / "fp32"), lanes=2, batch_size=2, image_cache=False) as two:
        a, b = one.tag(images, "moderation"), two.tag(images, "moderation")
        assert one.encoder.lanes == 1 and two.encoder.lanes == 2 and two.lanes == 2
    assert [r.scores for r in a] == [r.scores for r in b]


# -- the qualification gate --------------------------------------------------------------


def test_an_unqualified_int8_build_is_refused_naming_qualify(builds, cache, tmp_path):
    runtime = fresh_copy(builds / "int8", tmp_path)
    with Tagger(str(runtime), image_cache=False) as tagger, pytest.raises(ConfigurationError) as info:
        tagger.tag([sample_image(1)], "moderation")
    assert "zstagger runtime qualify" in str(info.value) and "has not been qualified" in str(info.value)
    path = tmp_path / "one.jpg"
    sample_image(1).save(path)
    result = zstagger("tag", str(path), "-t", "moderation", "--model", str(runtime), ZSTAGGER_CACHE_DIR=str(cache))
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "zstagger runtime qualify" in result.stderr


def test_the_override_is_logged_and_recorded_in_every_result(builds, cache, tmp_path, caplog):
    runtime = fresh_copy(builds / "int8", tmp_path)
    settings = Settings(allow_unqualified_runtime=True)
    with caplog.at_level(logging.WARNING), Tagger(str(runtime), image_cache=False, settings=settings) as tagger:
        results = tagger.tag([sample_image(i) for i in range(3)], "moderation")
    assert all(r.provenance.unqualified is True and r.provenance.precision == "int8" for r in results)
    assert all(json.loads(r.to_json())["provenance"]["unqualified"] is True for r in results)
    assert any("ZSTAGGER_ALLOW_UNQUALIFIED_RUNTIME" in rec.getMessage() for rec in caplog.records)


def test_a_good_build_passes_and_is_then_used(builds, images, cache, tmp_path):
    from zstagger.evaluation.qualify import qualify

    # fp32: agrees with its source on every image, at the default limits
    record = qualify(builds / "fp32", "moderation", images=images / "qualify")
    assert record.passed and record.verdict_agreement == 1.0 and record.min_tag_agreement == 1.0
    assert record.max_abs_score_delta < 1e-2 and record.images == 40  # fp16-rounded cached vectors, Pillow vs torch resize
    # int8 of a random tiny model: a few percent of decisions flip, so the limits are lowered here
    runtime = fresh_copy(builds / "int8", tmp_path)
    settings = Settings(qualify_min_verdict_agreement=0.8, qualify_min_tag_agreement=0.8)
    record = qualify(runtime, "moderation", images=images / "qualify", settings=settings)
    assert record.passed, record.failures
    assert 0.8 <= record.verdict_agreement and record.max_abs_score_delta > 0  # int8 is not bit-exact
    with Tagger(str(runtime), image_cache=False) as tagger:
        result = tagger.tag([sample_image(2)], "moderation")[0]
        assert result.error is None and result.provenance.unqualified is None
        with pytest.raises(ConfigurationError, match="has not been qualified for taxonomy 'ecommerce'"):
            tagger.tag([sample_image(2)], "ecommerce")  # a record is per taxonomy
    os.utime(runtime / "vision.bin", ns=(time.time_ns(), time.time_ns() + 10**9))  # edited after qualifying
    with Tagger(str(runtime), image_cache=False) as tagger, pytest.raises(ConfigurationError, match="changed after"):
        tagger.tag([sample_image(2)], "moderation")


def test_the_gate_fails_a_damaged_build(tiny_model_dir, images, cache, tmp_path):
    """A build whose weights are not the source model's (another initialisation: perturbed
    weights) disagrees with it; qualifying records the failure and the build is refused."""
    from zstagger.testing import make_tiny_checkpoint

    other = make_tiny_checkpoint(tmp_path / "other", seed=1)
    calibration = sorted(str(p) for p in (images / "calibration").iterdir())[:8]
    build_runtime(str(other), tmp_path / "damaged", "int8", calibration)
    labels = ",".join(LABELS)
    result = zstagger("runtime", "qualify", str(tmp_path / "damaged"), "--labels", labels, "--images", str(images / "qualify"),
                      "--source", str(tiny_model_dir), "--json", ZSTAGGER_CACHE_DIR=str(cache))
    assert result.returncode == 1, result.stderr
    record = json.loads(result.stdout)
    assert not record["passed"] and record["decision"] == "top label" and record["verdict_agreement"] < 0.9
    assert record["failures"][0].startswith("top label agreement")
    path = tmp_path / "one.jpg"
    sample_image(1).save(path)
    refused = zstagger("tag", str(path), "--labels", labels, "--model", str(tmp_path / "damaged"), ZSTAGGER_CACHE_DIR=str(cache))
    assert refused.returncode == 2 and "failed `zstagger runtime qualify`" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_qualifying_on_labelled_data_reports_the_accuracy_change(builds, cache, tmp_path):
    from zstagger.evaluation.qualify import qualify
    from zstagger.synthetic import write_labelled_folders

    data = write_labelled_folders(tmp_path / "data", LABELS, per_label=6, size=(160, 120))
    record = qualify(builds / "fp32", labels=LABELS, data=data)
    assert record.labelled and record.images == 24 and record.passed
    accuracy = record.accuracy
    assert accuracy.figure == "top1_accuracy" and accuracy.change == pytest.approx(accuracy.runtime - accuracy.source)
    assert accuracy.change_low <= accuracy.change <= accuracy.change_high
    assert (builds / "fp32" / "qualifications" / f"{record.taxonomy_fingerprint}.json").is_file()


# -- start-up ----------------------------------------------------------------------------


def test_tagging_through_a_built_runtime_imports_neither_torch_nor_transformers(builds, cache, tmp_path):
    path = tmp_path / "one.jpg"
    sample_image(1).save(path)
    script = (
        "import sys\n"
        "from zstagger.cli import main\n"
        "try:\n    main()\n"
        "except SystemExit as exc:\n    code = exc.code\n"
        "print(' '.join(m for m in ('torch', 'transformers') if m in sys.modules) or 'clean', code, file=sys.stderr)\n"
    )
    args = ["tag", str(path), "-t", "moderation", "--model", str(builds / "fp32"), "--format", "jsonl"]
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120,
                            env=_environ(ZSTAGGER_CACHE_DIR=str(cache)))
    assert result.stderr.strip().splitlines()[-1] == "clean 0", result.stderr
    assert json.loads(result.stdout)["provenance"]["runtime"] == "openvino"


# -- the HTTP service and workers take a runtime directory like a checkpoint -------------


def test_serve_tags_with_a_built_runtime(builds, cache, tmp_path):
    import httpx
    from harness import ApiServer

    runtime = fresh_copy(builds / "int8", tmp_path)
    env = {"ZSTAGGER_MODEL": str(runtime), "ZSTAGGER_API_ALLOW_ANONYMOUS": "1", "ZSTAGGER_CACHE_DIR": str(cache),
           "ZSTAGGER_ALLOW_UNQUALIFIED_RUNTIME": "1"}
    server = ApiServer(env, tmp_path).wait_ready()
    try:
        ready = httpx.get(server.url + "/readyz").json()
        assert ready["precision"] == "int8" and ready["device"] == "openvino:cpu"
        path = tmp_path / "one.jpg"
        sample_image(4, (120, 90)).save(path)
        response = httpx.post(server.url + "/v1/tag", timeout=60, files=[("images", ("one.jpg", path.read_bytes()))],
                              data={"taxonomy": "moderation"})
        assert response.status_code == 200, response.text
        provenance = response.json()["results"][0]["provenance"]
        assert provenance["runtime"] == "openvino" and provenance["precision"] == "int8" and provenance["unqualified"] is True
    finally:
        server.stop()
    assert "Traceback" not in server.log_path.read_text()


def test_a_worker_refuses_a_damaged_runtime_before_forking(builds, tmp_path):
    broken = fresh_copy(builds / "fp32", tmp_path)
    (broken / MANIFEST_NAME).write_text('{"format_version": 99}')
    result = zstagger("worker", "--model", str(broken), ZSTAGGER_REDIS_URL="redis://127.0.0.1:1/0")
    assert result.returncode == 2 and "not a valid runtime manifest" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
