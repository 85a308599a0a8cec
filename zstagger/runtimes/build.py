"""``zstagger runtime build``: a Hugging Face CLIP-family checkpoint to an OpenVINO runtime directory.

Exports exactly what :class:`~zstagger.engine.model.ClipEncoder` computes: the vision tower
with the pixel affine in front (uint8 (batch, height, width, 3) in) and the projection and
L2 normalisation behind; the text tower from token ids (and mask) to normalised
embeddings. Batch (and text length) are dynamic. ``int8``: NNCF post-training
quantization of the vision tower (``ModelType.TRANSFORMER``) on the user's calibration
images, prepared as the runtime prepares images when tagging; its float constants and the
text tower are kept in fp16. ``fp16``: weights stored in fp16. ``fp32``: as the checkpoint.

Needs torch, transformers, openvino and nncf (building only; using the result needs openvino).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigurationError, ImageLoadError, ModelLoadError
from ..images import ImageInput, ImagePolicy, describe, open_image
from ..sources import read_bytes
from .manifest import (
    BUILD_PRECISIONS, FORMAT_VERSION, MANIFEST_NAME, CalibrationSet, PreprocessingConfig, RuntimeManifest, SourceModel,
    TextConfig, is_runtime_dir, sha256_file, write_manifest,
)

Log = Callable[[str], None]
#: The most calibration images used (NNCF's own default subset is 300).
MAX_CALIBRATION_IMAGES = 1000


def calibration_pixels(
    refs: Sequence[ImageInput], preprocessor, policy: ImagePolicy, log: Log = lambda _: None
) -> tuple[list[np.ndarray], CalibrationSet]:
    """Calibration images read and prepared as the built runtime prepares images when tagging
    (JPEG draft decode at twice the input size, Pillow resize and crop), and the set's
    fingerprint: sha256 over the sorted sha256 of each image's bytes. Unreadable images are
    skipped with a line on the log; none readable is an error."""
    if len(refs) > MAX_CALIBRATION_IMAGES:
        raise ConfigurationError(f"{len(refs)} calibration images given; at most {MAX_CALIBRATION_IMAGES} are used, pass fewer")
    pixels, digests = [], []
    for ref in refs:
        try:
            data = read_bytes(ref, policy)
            with open_image(data, policy, 2 * preprocessor.min_decode_size) as picture:
                pixels.append(preprocessor(picture, True))
        except ImageLoadError as exc:
            log(f"calibration image {describe(ref)} skipped: {exc.message}")
            continue
        digests.append(hashlib.sha256(data).hexdigest())
    if not pixels:
        raise ConfigurationError("none of the calibration images could be read; pass a directory of JPEG/PNG images")
    fingerprint = hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()
    return pixels, CalibrationSet(fingerprint=fingerprint, count=len(pixels))


def build_runtime(
    model: str,
    out: str | Path,
    precision: str = "int8",
    calibration: Sequence[ImageInput] | None = None,
    *,
    runtime: str = "openvino",
    policy: ImagePolicy | None = None,
    overwrite: bool = False,
    log: Log = lambda _: None,
) -> RuntimeManifest:
    """Build a runtime directory ``out`` from ``model`` (a checkpoint directory or Hub id)."""
    if runtime != "openvino":
        raise ConfigurationError(f"unknown runtime {runtime!r}: the one runtime that can be built is openvino")
    if precision not in BUILD_PRECISIONS:
        raise ConfigurationError(f"unknown precision {precision!r} for a built runtime: use one of {', '.join(BUILD_PRECISIONS)}")
    if precision == "int8" and not calibration:
        raise ConfigurationError(
            "int8 needs calibration images: pass --calibration DIR (a few dozen to a few hundred of your own images)"
        )
    if is_runtime_dir(model):
        raise ConfigurationError(f"{model} is a built runtime already; build from the checkpoint it was made from")
    out = Path(out).expanduser()
    _check_output(out, overwrite)
    from ..engine.model import ClipEncoder  # torch and transformers: building only

    log(f"loading {model}")
    encoder = ClipEncoder.load(model, device="cpu", precision="fp32")
    if encoder.preprocessor is None:
        raise ModelLoadError(f"{model}: its image processor options cannot be reproduced without transformers; "
                             "it cannot be built into a runtime")
    pixels, calibration_set = (None, None)
    if calibration:
        log(f"reading {len(calibration)} calibration images")
        pixels, calibration_set = calibration_pixels(calibration, encoder.preprocessor, policy or ImagePolicy(), log)
    try:
        import nncf  # noqa: F401  (only int8 needs it; checked before the long export)
        import openvino as ov
    except ImportError as exc:
        from ..extras import missing

        raise missing(exc.name or "openvino") from None
    tmp = Path(tempfile.mkdtemp(prefix=".zstagger-build-", dir=out.parent))
    # The exporters' tracer warnings and NNCF's progress bars are not the user's output:
    # stdout stays for machine-readable output, and the warnings say nothing actionable.
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            manifest = _export_all(encoder, model, precision, pixels, calibration_set, tmp, ov, log)
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"wrote {out}")
    return manifest


def _export_all(encoder, model, precision, pixels, calibration_set, tmp: Path, ov, log: Log) -> RuntimeManifest:
    from ..engine.model import _features

    log("exporting the vision tower")
    vision = _export_vision(encoder, _features, ov)
    if precision == "int8":
        vision = _quantize(vision, pixels, log)  # type: ignore[arg-type]
    ov.save_model(vision, str(tmp / "vision.xml"), compress_to_fp16=precision != "fp32")
    log("exporting the text tower")
    text, text_inputs = _export_text(encoder, _features, ov)
    ov.save_model(text, str(tmp / "text.xml"), compress_to_fp16=precision != "fp32")
    _save_tokenizer(model, tmp / "tokenizer.json")
    manifest = _manifest(encoder, model, precision, calibration_set, text_inputs, tmp)
    write_manifest(tmp, manifest)
    return manifest


def _check_output(out: Path, overwrite: bool) -> None:
    if out.exists():
        if not out.is_dir():
            raise ConfigurationError(f"{out} exists and is not a directory")
        if any(out.iterdir()) and not (overwrite and (out / MANIFEST_NAME).is_file()):
            raise ConfigurationError(
                f"{out} is not empty; pick a new directory (or --overwrite to replace a runtime built there before)"
            )
        out.rmdir() if not any(out.iterdir()) else None
    if not out.parent.is_dir():
        raise ConfigurationError(f"{out.parent} does not exist")


def _export_vision(encoder, features, ov):
    import torch

    class Vision(torch.nn.Module):
        """uint8 (B, H, W, 3) -> the normalised embedding, as ClipEncoder.encode_images."""

        def __init__(self):
            super().__init__()
            self.clip = encoder.model
            self.register_buffer("scale", encoder._scale.detach().clone())
            self.register_buffer("shift", encoder._shift.detach().clone())

        def forward(self, pixels):
            x = pixels.permute(0, 3, 1, 2).float() * self.scale + self.shift
            feats = features(self.clip.get_image_features(pixel_values=x)).float()
            return torch.nn.functional.normalize(feats, dim=-1)

    height, width = encoder.preprocessor.output_size
    example = torch.zeros((2, height, width, 3), dtype=torch.uint8)
    with torch.no_grad():
        model = ov.convert_model(Vision().eval(), example_input=example, input=[([-1, height, width, 3], ov.Type.u8)])
    model.inputs[0].get_tensor().set_names({"pixels"})
    model.outputs[0].get_tensor().set_names({"embeddings"})
    return model


def _export_text(encoder, features, ov):
    import torch

    sample = encoder.tokenizer(["a photo of a cat", "a photo"], padding=encoder.text_padding, truncation=True,
                               max_length=encoder.text_max_length, return_tensors="pt")
    names = [name for name in ("input_ids", "attention_mask") if name in sample]

    class Text(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.clip = encoder.model

        def forward(self, input_ids, attention_mask=None):
            kwargs = {"input_ids": input_ids}
            if attention_mask is not None:
                kwargs["attention_mask"] = attention_mask
            feats = features(self.clip.get_text_features(**kwargs)).float()
            return torch.nn.functional.normalize(feats, dim=-1)

    example = {name: sample[name] for name in names}
    with torch.no_grad():
        model = ov.convert_model(Text().eval(), example_input=example,
                                 input=[([-1, -1], ov.Type.i64) for _ in names])
    for port, name in zip(model.inputs, names):
        port.get_tensor().set_names({name})
    model.outputs[0].get_tensor().set_names({"embeddings"})
    return model, names


def _quantize(model, pixels: list[np.ndarray], log: Log):
    import nncf

    log(f"quantizing the vision tower to int8 on {len(pixels)} calibration images")
    dataset = nncf.Dataset(pixels, lambda item: item[None])
    return nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(pixels))


def _save_tokenizer(model: str, path: Path) -> None:
    """The fast tokenizer's tokenizer.json (converted from a slow one's files when needed),
    without padding or truncation: the runtime sets those from the manifest."""
    from transformers import AutoTokenizer

    from ..engine.locate import locate

    tokenizer = AutoTokenizer.from_pretrained(locate(model), local_files_only=os.path.isdir(locate(model)))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelLoadError(f"{model}: its tokenizer has no tokenizers (fast) form; it cannot be built into a runtime")
    backend.no_padding()
    backend.no_truncation()
    backend.save(str(path))


def _manifest(encoder, model: str, precision: str, calibration: CalibrationSet | None, text_inputs: list[str],
              directory: Path) -> RuntimeManifest:
    import importlib.metadata as md

    p = encoder.preprocessor
    tokenizer = encoder.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    files = {"vision": "vision.xml", "text": "text.xml", "tokenizer": "tokenizer.json"}
    hashed = ["vision.xml", "vision.bin", "text.xml", "text.bin", "tokenizer.json"]
    probe = encoder.encode_text(["a"])
    versions = {}
    for package in ("zstagger", "openvino", "nncf", "torch", "transformers"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return RuntimeManifest(
        format_version=FORMAT_VERSION, runtime="openvino", precision=precision,  # type: ignore[arg-type]
        source=SourceModel(model=model, fingerprint=encoder.fingerprint),
        calibration=calibration,
        preprocessing=PreprocessingConfig(
            shortest_edge=p.shortest_edge, resize_to=p.resize_to, crop=p.crop, resample=p.resample,
            rescale_factor=p.rescale_factor, mean=p.mean, std=p.std,
        ),
        logit_scale=encoder.logit_scale, logit_bias=encoder.logit_bias, uses_sigmoid=encoder.uses_sigmoid,
        embedding_dim=int(probe.shape[-1]),
        text=TextConfig(padding=encoder.text_padding, max_length=encoder.text_max_length, pad_id=int(pad_id),
                        inputs=text_inputs),  # type: ignore[arg-type]
        files=files,
        file_hashes={name: sha256_file(directory / name) for name in hashed if (directory / name).is_file()},
        versions=versions,
    )
