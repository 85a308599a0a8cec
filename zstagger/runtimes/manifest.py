"""The self-description of a built runtime directory: ``zstagger-runtime.json``.

A directory made by ``zstagger runtime build`` holds the exported towers, the tokenizer and
this manifest: which runtime and precision, which source model (name and fingerprint), which
calibration images (fingerprint, count), the preprocessing and the scoring scalars. A
manifest is read as untrusted input (size-bounded, validated, file names confined to the
directory). The runtime's fingerprint, which keys every cached embedding it computes, is
derived here from the manifest and its files. Imports neither torch nor transformers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ModelLoadError

MANIFEST_NAME = "zstagger-runtime.json"
FORMAT_VERSION = 1
RUNTIMES = ("openvino",)
BUILD_PRECISIONS = ("int8", "fp16", "fp32")
_MAX_MANIFEST_BYTES = 1024 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceModel(_Strict):
    model: str
    fingerprint: str


class CalibrationSet(_Strict):
    fingerprint: str  # sha256 over the sorted sha256 of each image's bytes
    count: int = Field(ge=1)


class PreprocessingConfig(_Strict):
    """The fields of :class:`~zstagger.engine.preprocess.Preprocessor` (geometry + normalisation)."""

    shortest_edge: int | None = Field(None, ge=1, le=8192)
    resize_to: tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    resample: int = Field(ge=0, le=5)
    rescale_factor: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class TextConfig(_Strict):
    padding: Literal["longest", "max_length"]
    max_length: int = Field(ge=1, le=4096)
    pad_id: int = Field(ge=0)
    inputs: list[Literal["input_ids", "attention_mask"]]


class RuntimeManifest(_Strict):
    format_version: int
    runtime: Literal["openvino"]
    precision: Literal["int8", "fp16", "fp32"]
    source: SourceModel
    calibration: CalibrationSet | None = None
    preprocessing: PreprocessingConfig
    logit_scale: float
    logit_bias: float | None = None
    uses_sigmoid: bool
    embedding_dim: int = Field(ge=1)
    text: TextConfig
    files: dict[str, str]  # role (vision, text, tokenizer) -> file name in the directory
    file_hashes: dict[str, str]  # file name -> sha256 at build time (the .xml and its .bin)
    versions: dict[str, str] = {}

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != FORMAT_VERSION:
            raise ValueError(f"format version {value} is not {FORMAT_VERSION}: rebuild it with this zstagger")
        return value

    @field_validator("files", "file_hashes")
    @classmethod
    def _plain_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in (*value.keys(), *value.values()):
            if not name or "/" in name or "\\" in name or name.startswith("."):
                raise ValueError(f"{name!r} is not a plain file name")
        return value


def is_runtime_dir(model: str | None) -> bool:
    """Whether ``model`` names a directory built by ``zstagger runtime build``."""
    if not model:
        return False
    try:
        return (Path(model).expanduser() / MANIFEST_NAME).is_file()
    except (OSError, ValueError):
        return False


def read_manifest(directory: str | Path) -> RuntimeManifest:
    """The validated manifest of a built runtime, or a one-line ModelLoadError."""
    path = Path(directory).expanduser() / MANIFEST_NAME
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ModelLoadError(f"{directory}: cannot read {MANIFEST_NAME} ({exc.strerror or exc})") from None
    if len(data) > _MAX_MANIFEST_BYTES:
        raise ModelLoadError(f"{directory}: {MANIFEST_NAME} is larger than {_MAX_MANIFEST_BYTES} bytes; it is not a runtime manifest")
    try:
        manifest = RuntimeManifest.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise ModelLoadError(
            f"{directory}: {MANIFEST_NAME} is not a valid runtime manifest ({where}: {first['msg']}); rebuild it with "
            "`zstagger runtime build`"
        ) from None
    for role in ("vision", "text", "tokenizer"):
        if role not in manifest.files:
            raise ModelLoadError(f"{directory}: {MANIFEST_NAME} names no {role} file; rebuild it with `zstagger runtime build`")
    return manifest


def write_manifest(directory: str | Path, manifest: RuntimeManifest) -> Path:
    path = Path(directory) / MANIFEST_NAME
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
    return path


def runtime_fingerprint(directory: str | Path) -> str:
    """A short hash that changes with the manifest (source fingerprint, runtime, precision,
    calibration set, IR hashes at build time) and with each file it names (name, size,
    modification time: editing weights after the build changes it too, without reading them)."""
    directory = Path(directory).expanduser()
    manifest_bytes = (directory / MANIFEST_NAME).read_bytes()[:_MAX_MANIFEST_BYTES]
    manifest = read_manifest(directory)
    h = hashlib.sha256(b"zstagger-runtime\0" + manifest_bytes)
    for name in sorted({*manifest.files.values(), *manifest.file_hashes}):
        try:
            st = (directory / name).stat()
        except OSError:
            h.update(f"{name}:missing\0".encode())
            continue
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:16]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
