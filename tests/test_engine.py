"""The engine on real (tiny) checkpoints, against transformers' own pipeline and processors."""

import time

import numpy as np
import pytest
import torch
from PIL import Image

from zstagger import ModelNotFoundError, Tagger
from zstagger.engine.model import ClipEncoder, cpu_has_native_bf16, resolve_precision
from zstagger.engine.preprocess import Preprocessor
from zstagger.testing import sample_image

LABELS = ["a cat", "a dog", "the car", "an owl", "seagull"]


@pytest.fixture(scope="module")
def hf_pipeline_for():
    from transformers import pipeline

    cache = {}

    def get(path):
        if path not in cache:
            cache[path] = pipeline(model=str(path), task="zero-shot-image-classification", device="cpu")
        return cache[path]

    return get


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_adhoc_labels_equal_the_hf_pipeline(kind, tiny_model_dir, tiny_siglip_dir, hf_pipeline_for):
    path = tiny_model_dir if kind == "clip" else tiny_siglip_dir
    pipe = hf_pipeline_for(path)
    tagger = Tagger(str(path), device="cpu", precision="fp32", batch_size=3, exact_preprocessing=True)
    images = [sample_image(seed, size) for seed, size in enumerate([(96, 72), (50, 130), (300, 200), (64, 64)])]
    ours = tagger.tag(images, labels=LABELS)
    for image, result in zip(images, ours):
        reference = pipe(image, candidate_labels=LABELS)
        assert [r["label"] for r in reference] == [s.label for s in result.scores]
        np.testing.assert_allclose([s.score for s in result.scores], [r["score"] for r in reference], atol=2e-6)
        assert result.tags == [reference[0]["label"]]
    if kind == "siglip":  # independent sigmoids, as the pipeline reports for SigLIP
        assert sum(s.score for s in ours[0].scores) != pytest.approx(1.0)


@pytest.fixture(scope="module")
def exact_tagger(tiny_model_dir):
    return Tagger(str(tiny_model_dir), device="cpu", precision="fp32", exact_preprocessing=True)


def test_custom_template_equals_the_pipelines_hypothesis_template(exact_tagger, tiny_model_dir, hf_pipeline_for):
    image = sample_image(7)
    reference = hf_pipeline_for(tiny_model_dir)(image, candidate_labels=LABELS, hypothesis_template="a {} in the wild")
    ours = exact_tagger.tag([image], labels=LABELS, template="a {} in the wild")[0]
    np.testing.assert_allclose([s.score for s in ours.scores], [r["score"] for r in reference], atol=2e-6)


def test_matches_manual_processor_and_model(exact_tagger, tiny_model_dir):
    from transformers import AutoModelForZeroShotImageClassification, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModelForZeroShotImageClassification.from_pretrained(tiny_model_dir).eval()
    images = [sample_image(11, (200, 150)), sample_image(12, (40, 90))]
    texts = [f"This is a photo of {label}." for label in LABELS]
    with torch.no_grad():
        probs = model(**processor(images=images, text=texts, padding=True, return_tensors="pt")).logits_per_image.softmax(-1)
    for row, result in zip(probs, exact_tagger.tag(images, labels=LABELS)):
        by_label = {s.label: s.score for s in result.scores}
        np.testing.assert_allclose([by_label[label] for label in LABELS], row.numpy(), atol=2e-6)


def varied_images():
    rng = np.random.default_rng(0)
    sizes = [(64, 64), (65, 64), (640, 480), (480, 640), (1000, 90), (33, 700), (63, 200), (225, 224), (64, 63), (7, 5)]
    for i, (w, h) in enumerate(sizes):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        arr[: h // 2] = (arr[: h // 2] // 4) + 100  # some structure, not only noise
        yield Image.fromarray(arr)
    yield sample_image(1, (300, 200), mode="L").convert("RGB")
    rgba = sample_image(2, (120, 160), mode="RGBA")
    rgba.putalpha(128)
    yield rgba


@pytest.mark.parametrize("which", ["clip", "siglip"])
def test_preprocessing_reproduces_the_checkpoints_image_processor(which, tiny_model_dir, tiny_siglip_dir):
    from transformers import AutoImageProcessor

    from zstagger.images import to_rgb

    path = tiny_model_dir if which == "clip" else tiny_siglip_dir
    hf = AutoImageProcessor.from_pretrained(path)
    encoder = ClipEncoder.load(str(path), device="cpu", precision="fp32")
    scale, shift = (torch.from_numpy(a).view(3, 1, 1) for a in encoder.preprocessor.affine())
    for image in varied_images():
        ours = torch.from_numpy(np.array(encoder.preprocess(to_rgb(image)))).permute(2, 0, 1).float() * scale + shift
        theirs = torch.from_numpy(hf(images=[image], return_tensors="np")["pixel_values"][0])
        assert ours.shape == theirs.shape
        # Same uint8 pixels (same resize, same crop); only float rounding differs.
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def jpeg_bytes(image, quality=90):
    import io

    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_fast_preprocessing_stays_within_a_level_of_pillow_on_decoded_pixels(tiny_model_dir):
    """Fast mode's resize kernel (torch's antialiased uint8 bicubic) against Pillow's."""
    from zstagger.images import to_rgb

    encoder = ClipEncoder.load(str(tiny_model_dir), device="cpu", precision="fp32")
    for image in varied_images():
        rgb = to_rgb(image)
        exact = encoder.preprocess(rgb, exact=True).astype(int)
        fast = encoder.preprocess(rgb, exact=False).astype(int)
        diff = np.abs(exact - fast)
        assert diff.max() <= 1 and diff.mean() < 0.02


def test_fast_jpeg_decoding_is_close_to_a_full_decode(tiny_model_dir):
    """Reduced-scale JPEG decoding keeps at least twice the model's input size.

    Tolerance: libjpeg's DCT-domain 2x downscale is not Pillow's bicubic filter, so pixels
    move by a few levels (mean <= 4 of 255, 99th percentile <= 16) on photos carrying
    heavy sensor-like noise, the worst case for any two downscalers; smooth content moves
    far less. On the vitb32 checkpoint this kept embeddings at cosine >= 0.996 to the
    exact pipeline (benchmarks/README.md).
    """
    from zstagger.images import load_image

    tagger = Tagger(str(tiny_model_dir), device="cpu", precision="fp32")  # default: fast
    assert tagger.decode_size == 2 * 64  # twice the tiny model's input size
    for seed, size in [(0, (1280, 960)), (1, (960, 1280)), (2, (1600, 900)), (3, (700, 500)), (4, (300, 200))]:
        data = jpeg_bytes(sample_image(seed, size))
        exact = tagger.encoder.preprocess(load_image(data), exact=True).astype(int)
        fast = tagger.encoder.preprocess(load_image(data, min_size=tagger.decode_size), exact=False).astype(int)
        diff = np.abs(exact - fast)
        assert diff.mean() <= 4 and np.percentile(diff, 99) <= 16, (size, diff.mean(), np.percentile(diff, 99))


def test_preprocessor_reads_real_clip_settings():
    from transformers import CLIPImageProcessor

    pre = Preprocessor.from_hf(CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}))
    assert pre.shortest_edge == 224 and pre.crop == (224, 224) and pre.resample == Image.BICUBIC
    assert pre.resized_size(1280, 960) == (298, 224)


def test_text_embeddings_are_computed_once_per_taxonomy(tiny_model_dir, monkeypatch):
    from zstagger.settings import Settings

    tagger = Tagger(str(tiny_model_dir), device="cpu", precision="fp32", batch_size=2, settings=Settings(cache_dir=""))
    calls = []
    original = tagger.encoder.encode_text
    monkeypatch.setattr(tagger.encoder, "encode_text", lambda prompts: calls.append(len(prompts)) or original(prompts))
    images = [sample_image(i) for i in range(5)]
    tagger.tag(images, taxonomy="moderation")
    tagger.tag(images, taxonomy="moderation")
    tagger.tag(images, labels=["a", "b"])
    assert len(calls) == 2  # moderation once (all its prompts in one call), the ad-hoc labels once


def test_one_vision_forward_per_batch(tiny_model_dir, monkeypatch):
    tagger = Tagger(str(tiny_model_dir), device="cpu", precision="fp32", batch_size=4, lanes=1)
    batches = []
    original = tagger.encoder.model.get_image_features
    monkeypatch.setattr(tagger.encoder.model, "get_image_features",
                        lambda pixel_values: batches.append(pixel_values.shape[0]) or original(pixel_values=pixel_values))
    tagger.tag([sample_image(i) for i in range(10)], labels=["x", "y"])
    assert batches == [4, 4, 2]


def test_text_embeddings_are_cached_on_disk_keyed_by_model_and_prompts(tiny_model_dir, tmp_path, monkeypatch):
    from zstagger import Label, Taxonomy
    from zstagger.settings import Settings

    settings = Settings(cache_dir=str(tmp_path))
    tax = Taxonomy(name="t", labels=[Label(name="cat"), Label(name="dog")])
    first = Tagger(str(tiny_model_dir), device="cpu", precision="fp32", settings=settings)
    cold = first.classifier(tax).plan.label_embeds
    second = Tagger(str(tiny_model_dir), device="cpu", precision="fp32", settings=settings)
    monkeypatch.setattr(second.encoder, "encode_text", lambda prompts: pytest.fail("should come from the disk cache"))
    assert np.array_equal(second.classifier(tax).plan.label_embeds, cold)
    assert len(list((tmp_path / "text-embeddings").glob("*.npy"))) == 1
    changed = Taxonomy(name="t", labels=[Label(name="cat"), Label(name="dog", synonyms=["puppy"])])
    calls = []
    monkeypatch.setattr(second.encoder, "encode_text", lambda prompts: calls.append(prompts) or first.encoder.encode_text(prompts))
    second.classifier(changed)
    assert calls and "This is a photo of puppy." in calls[0]  # a changed taxonomy misses the cache


@pytest.mark.parametrize("lanes", [1, 3])
def test_results_do_not_depend_on_batch_size_or_lanes(tiny_model_dir, lanes):
    images = [sample_image(i, (80 + i * 13, 60)) for i in range(7)]
    a = Tagger(str(tiny_model_dir), device="cpu", precision="fp32", batch_size=1, lanes=lanes).tag(images, taxonomy="ecommerce")
    b = Tagger(str(tiny_model_dir), device="cpu", precision="fp32", batch_size=5).tag(images, taxonomy="ecommerce")
    for x, y in zip(a, b):
        assert x.tags == y.tags
        np.testing.assert_allclose([s.score for s in x.scores], [s.score for s in y.scores], atol=1e-5)


def test_precision_auto_and_fp32_stays_selectable(tiny_model_dir):
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == torch.float32
    assert resolve_precision("auto", cpu) == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert resolve_precision("auto", torch.device("cuda")) == torch.float16
    fp32 = Tagger(str(tiny_model_dir), device="cpu", precision="fp32")
    bf16 = Tagger(str(tiny_model_dir), device="cpu", precision="bf16")
    assert fp32.encoder.dtype == torch.float32 and bf16.encoder.dtype == torch.bfloat16
    assert bf16.encoder.model.vision_model.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert bf16.encoder.model.text_model.embeddings.token_embedding.weight.dtype == torch.bfloat16  # one copy, all bf16
    assert bf16.encoder.logit_scale == pytest.approx(fp32.encoder.logit_scale, rel=1e-6)  # read before the cast
    images = [sample_image(i) for i in range(4)]
    for a, b in zip(fp32.tag(images, labels=LABELS), bf16.tag(images, labels=LABELS)):
        assert max(abs(x.cosine - y.cosine) for x, y in zip(
            sorted(a.scores, key=lambda s: s.label), sorted(b.scores, key=lambda s: s.label))) < 0.05


def test_missing_local_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        ClipEncoder.load(str(tmp_path / "nope"))
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        ClipEncoder.load(str(tmp_path))


def test_uncached_hub_model_fails_fast_and_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError) as info:
        ClipEncoder.load("openai/clip-vit-base-patch32")
    assert time.monotonic() - start < 20
    message = str(info.value)
    assert "not in the local Hugging Face cache" in message and "--model /path/to/model" in message


def test_unknown_device_and_precision_are_configuration_errors(tiny_model_dir):
    from zstagger import ConfigurationError

    with pytest.raises(ConfigurationError, match="unknown device"):
        ClipEncoder.load(str(tiny_model_dir), device="tpu")
    with pytest.raises(ConfigurationError, match="unknown precision"):
        ClipEncoder.load(str(tiny_model_dir), precision="int3")
