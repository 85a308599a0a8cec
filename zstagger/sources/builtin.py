"""The built-in sources that need no extra: local files, http(s) and ``data:`` URLs.

Registered like any plugin's (``register_image_sources``). Each hands the reference to the
owner of its rules: :func:`zstagger.images.read_image_bytes` (files through
:func:`zstagger.files.read_regular_file`, URLs through :mod:`zstagger.net`), and
``data:`` URLs are decoded under the same byte cap.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import unquote_to_bytes

from ..errors import ImageLoadError
from ..hookspecs import hookimpl
from ..images.load import read_image_bytes
from ..images.policy import DEFAULT_POLICY
from .base import ReadRequest


class FileSource:
    """Local files: paths and ``file://`` URLs (regular files only, capped)."""

    schemes = ("file",)
    bounded = True

    def open(self, url: str, request: ReadRequest) -> bytes:
        path = url[len("file://"):] if url[:7].lower() == "file://" else url
        return read_image_bytes(path, request.policy or DEFAULT_POLICY)


class HttpSource:
    """http(s) URLs, through the hardened HTTP client (deadline, size cap, address policy)."""

    schemes = ("http", "https")
    bounded = True

    def open(self, url: str, request: ReadRequest) -> bytes:
        return read_image_bytes(url, request.policy or DEFAULT_POLICY)


class DataSource:
    """``data:[<type>][;base64],<data>`` URLs, decoded under the byte cap."""

    schemes = ("data",)
    bounded = True

    def open(self, url: str, request: ReadRequest) -> bytes:
        head, sep, payload = url.partition(",")
        if not sep:
            raise ImageLoadError("invalid_url", "a data: URL needs a ',' before its data")
        if len(payload) > (request.max_bytes + 2) // 3 * 4 + 4:
            raise ImageLoadError("too_large", f"a data: URL is over the {request.max_bytes:,}-byte limit "
                                 "(ZSTAGGER_MAX_IMAGE_BYTES)")
        try:
            data = base64.b64decode(payload, validate=True) if head.endswith(";base64") else unquote_to_bytes(payload)
        except (binascii.Error, ValueError):
            raise ImageLoadError("invalid_url", "a data: URL's base64 is not valid") from None
        return data


@hookimpl
def register_image_sources(register) -> None:
    register(FileSource())
    register(HttpSource())
    register(DataSource())
