"""Optional dependencies: which extra brings which package, and one clear line when one is missing.

The core install is a producer's (enqueue, status, results, cancel, webhook verification):
tagging needs ``zstagger[model]`` (torch, transformers), the HTTP service ``zstagger[serve]``,
evaluation ``zstagger[eval]``; a built runtime ``zstagger[openvino]`` (no torch), building one
``zstagger[openvino-build]``. Imports nothing from zstagger but its errors.
"""

from __future__ import annotations

import importlib.util
from importlib import import_module
from types import ModuleType

from .errors import MissingExtraError

# top-level module -> (extra, package to pip install)
PROVIDERS: dict[str, tuple[str, str]] = {
    "torch": ("model", "torch"),
    "transformers": ("model", "transformers"),
    "safetensors": ("model", "safetensors"),
    "huggingface_hub": ("model", "huggingface-hub"),
    "fastapi": ("serve", "fastapi"),
    "uvicorn": ("serve", "uvicorn"),
    "multipart": ("serve", "python-multipart"),
    "sklearn": ("eval", "scikit-learn"),
    "matplotlib": ("eval", "matplotlib"),
    "av": ("video", "av"),
    "openvino": ("openvino", "openvino"),
    "tokenizers": ("openvino", "tokenizers"),
    "nncf": ("openvino-build", "nncf"),
    "s3fs": ("s3", "s3fs"),
    "gcsfs": ("gcs", "gcsfs"),
    "adlfs": ("azure", "adlfs"),
    "fsspec": ("s3", "fsspec"),
}
_PURPOSE = {"model": "tagging images", "serve": "the HTTP service", "eval": "evaluation", "video": "video files",
            "openvino": "a built OpenVINO runtime", "openvino-build": "building a runtime",
            "s3": "s3:// sources and sinks", "gcs": "gs:// sources and sinks", "azure": "az:// sources and sinks"}
# Packages of the core install (pyproject's dependencies, and what kombu's Redis transport
# imports without declaring it) whose import name is not their pip name.
CORE_PACKAGES: dict[str, str] = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "pydantic_settings": "pydantic-settings",
    "prometheus_client": "prometheus-client",
}


def missing(module: str) -> MissingExtraError:
    """The error for a missing module: what is missing, which extra brings it, how to install it.

    A module no extra provides belongs to the core install (or to a package the core
    depends on): the message names that package and the pip command that installs it.
    """
    top = (module or "").split(".")[0]
    if top not in PROVIDERS:
        package = CORE_PACKAGES.get(top, top)
        return MissingExtraError(
            f"{package} is not installed, and zstagger needs it (a broken or partial install): pip install {package} "
            "(or reinstall zstagger with its dependencies)"
        )
    extra, package = PROVIDERS[top]
    purpose = _PURPOSE.get(extra, "this")
    return MissingExtraError(
        f"{package} is not installed; {purpose} needs the {extra} extra: pip install \"zstagger[{extra}]\""
        + (" (for the CPU build of torch first: pip install torch --index-url https://download.pytorch.org/whl/cpu)"
           if extra in ("model", "serve") else "")
    )


def missing_from(exc: ImportError) -> MissingExtraError:
    """:func:`missing` for an ImportError met along the way (a module it names, or its own words)."""
    if isinstance(exc, MissingExtraError):
        return exc
    if exc.name:
        return missing(exc.name)
    return MissingExtraError(f"{exc}: a broken or partial install; reinstall zstagger with its dependencies")


def require(module: str) -> ModuleType:
    """Import ``module``, or raise the one-line error naming its extra."""
    try:
        return import_module(module)
    except ImportError as exc:
        raise missing(exc.name or module) from None


def check_installed(*modules: str) -> None:
    """Fail before any work when a package is missing, without importing it (imports are slow)."""
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # ValueError: a module blocked with sys.modules[name] = None
            found = False
        if not found:
            raise missing(module)
