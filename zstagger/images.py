"""Reading images from files, directories, URLs and bytes, safely.

Everything here turns one image reference into an RGB ``PIL.Image`` or raises
:class:`~zstagger.errors.ImageLoadError` with a stable ``kind``; callers turn that into an
error record for the one image and carry on with the batch.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import ipaddress
import os
import socket
import ssl
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Union
from urllib.parse import urljoin, urlsplit

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageLoadError



@dataclass(frozen=True)
class NamedBytes:
    """Encoded image bytes that keep a name (an uploaded file's path) for results."""

    name: str
    data: bytes


ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, NamedBytes]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff",
     ".ppm", ".pgm", ".pbm", ".pnm", ".ico", ".tga", ".jp2", ".j2k", ".avif", ".heic", ".heif"}
)

_MAX_REDIRECTS = 5
_ORIENTATION = 0x0112
_USER_AGENT = "zstagger (+https://pypi.org/project/zstagger/)"


@dataclass(frozen=True)
class ImagePolicy:
    """Limits applied to every image zstagger reads.

    ``max_pixels`` refuses decompression bombs before any pixel is decoded; URL fetches
    have a timeout (seconds, for the whole download), a size cap, and may not reach
    private, loopback or link-local addresses unless ``allow_private_urls`` is set.
    """

    url_timeout: float = 10.0
    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 64_000_000
    allow_private_urls: bool = False


def is_url(ref: object) -> bool:
    return isinstance(ref, str) and ref[:8].lower().startswith(("http://", "https://"))


def describe(ref: ImageInput) -> str:
    """The string that identifies an input in results: its path or URL, or a content hash."""
    if isinstance(ref, NamedBytes):
        return ref.name
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return "bytes:sha256:" + hashlib.sha256(ref).hexdigest()[:16]
    if isinstance(ref, Image.Image):
        return "pil:" + hashlib.sha256(ref.tobytes()).hexdigest()[:16]
    return os.fspath(ref)


def iter_inputs(images: ImageInput | Iterable[ImageInput]) -> Iterator[ImageInput]:
    """One reference or many, with directories expanded (see :func:`expand_inputs`)."""
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image, NamedBytes)):
        images = [images]
    return expand_inputs(images)


def expand_inputs(inputs: Iterable[ImageInput]) -> Iterator[ImageInput]:
    """Yield image references, replacing each directory by its image files (recursive, sorted).

    Anything that is not a directory is passed through unchanged; a path that does not
    exist fails later, as an error record for that one input.
    """
    for ref in inputs:
        if isinstance(ref, (str, os.PathLike)) and not is_url(ref) and os.path.isdir(ref):
            yield from _image_files(Path(ref))
        else:
            yield ref


def _image_files(root: Path) -> Iterator[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(os.path.join(dirpath, name))
    yield from sorted(found)


def load_image(ref: ImageInput, policy: ImagePolicy = ImagePolicy(), min_size: int | None = None) -> Image.Image:
    """Read, decode and normalise one image to RGB.

    ``min_size`` lets JPEG decoding work at a reduced DCT scale (``Image.draft``) as long
    as both sides stay at least that large; it is the speed knob the preprocessor uses.
    """
    if isinstance(ref, Image.Image):
        _check_pixels(ref, policy)
        return to_rgb(ref)
    if isinstance(ref, NamedBytes):
        ref = ref.data
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return decode(io.BytesIO(ref), policy, min_size)
    if is_url(ref):
        return decode(io.BytesIO(fetch_url(ref, policy)), policy, min_size)
    path = os.fspath(ref)
    try:
        with open(path, "rb") as fp:
            return decode(fp, policy, min_size)
    except FileNotFoundError:
        raise ImageLoadError("not_found", f"no such file: {path}") from None
    except IsADirectoryError:
        raise ImageLoadError("not_found", f"{path} is a directory with no images in it") from None
    except PermissionError:
        raise ImageLoadError("unreadable", f"permission denied: {path}") from None


def decode(fp, policy: ImagePolicy = ImagePolicy(), min_size: int | None = None) -> Image.Image:
    try:
        im = Image.open(fp)
    except UnidentifiedImageError:
        raise ImageLoadError("invalid_image", "not an image, or a format Pillow cannot read") from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError("too_many_pixels", str(exc)) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # a damaged header
        raise ImageLoadError("invalid_image", f"could not read image header: {exc}") from None
    _check_pixels(im, policy)
    try:
        if min_size and im.format == "JPEG":
            im.draft("RGB", (min_size, min_size))
        if im.getexif().get(_ORIENTATION, 1) != 1:  # exif_transpose copies the image even when upright
            im = ImageOps.exif_transpose(im)
        return to_rgb(im)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageLoadError("invalid_image", f"could not decode image: {exc}") from None


def _check_pixels(im: Image.Image, policy: ImagePolicy) -> None:
    width, height = im.size
    if width * height > policy.max_pixels:
        raise ImageLoadError(
            "too_many_pixels",
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of {policy.max_pixels:,} "
            "(a possible decompression bomb); raise ZSTAGGER_MAX_IMAGE_PIXELS if it is genuine",
        )
    if width == 0 or height == 0:
        raise ImageLoadError("invalid_image", f"image has no pixels ({width}x{height})")


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB.

    Transparency is composited onto white, as transformers' ``convert_to_rgb`` does, so
    a transparent PNG scores the same here as in the Hugging Face pipeline. 16-bit and
    float images are scaled into 8 bits instead of being clipped.
    """
    if im.mode == "RGB":
        im.load()
        return im
    if im.mode.startswith("I") or im.mode == "F":
        im = _to_8bit(im)
    if "A" in im.getbands() or "a" in im.getbands() or im.info.get("transparency") is not None:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _to_8bit(im: Image.Image) -> Image.Image:
    arr = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        peak = float(arr.max()) if arr.size else 0.0
        arr = arr * 255.0 if peak <= 1.0 else arr * (255.0 / peak) if peak > 255.0 else arr
    elif im.mode.startswith("I;16") or float(arr.max(initial=0)) > 255:
        peak = float(arr.max(initial=0))
        arr = arr / 257.0 if peak <= 65535 else arr * (255.0 / peak)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")


# --- URLs ---------------------------------------------------------------------------


def fetch_url(url: str, policy: ImagePolicy = ImagePolicy()) -> bytes:
    """Download an image with a deadline, a size cap and SSRF protection.

    Each hop of a redirect chain is resolved once and checked; the connection is made to
    that checked address (no second DNS lookup an attacker could answer differently).
    """
    deadline = time.monotonic() + policy.url_timeout
    for _ in range(_MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ImageLoadError("invalid_url", f"not an http(s) URL: {url}")
        port = parts.port or (443 if scheme == "https" else 80)
        address = _resolve_allowed(parts.hostname, port, policy)
        conn = _PinnedConnection.make(scheme, parts.hostname, port, address, _remaining(deadline, url))
        try:
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", path, headers={"User-Agent": _USER_AGENT, "Accept": "image/*,*/*;q=0.5"})
            resp = conn.getresponse()
            if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                url = urljoin(url, resp.getheader("Location"))
                continue
            if resp.status != 200:
                transient = resp.status in (408, 425, 429) or resp.status >= 500
                raise ImageLoadError("fetch_failed", f"HTTP {resp.status} {resp.reason} from {url}", transient=transient)
            return _read_capped(conn, resp, url, policy, deadline)
        except socket.timeout:
            raise ImageLoadError("fetch_timeout", f"timed out after {policy.url_timeout:g}s fetching {url}", transient=True) from None
        except ssl.SSLError as exc:
            raise ImageLoadError("fetch_failed", f"TLS error fetching {url}: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise ImageLoadError("fetch_failed", f"could not fetch {url}: {exc}", transient=True) from None
        finally:
            conn.close()
    raise ImageLoadError("fetch_failed", f"more than {_MAX_REDIRECTS} redirects fetching {url}")


def _remaining(deadline: float, url: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ImageLoadError("fetch_timeout", f"timed out fetching {url}", transient=True)
    return left


def _read_capped(
    conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, url: str, policy: ImagePolicy, deadline: float
) -> bytes:
    length = resp.getheader("Content-Length")
    if length and length.isdigit() and int(length) > policy.max_bytes:
        raise ImageLoadError("too_large", f"{url} is {int(length):,} bytes, over the {policy.max_bytes:,}-byte limit")
    chunks, total = [], 0
    while True:
        # The timeout bounds the whole download, not each read. (http.client may already
        # have handed the socket over to the response, so use the one we connected.)
        conn.pinned_socket.settimeout(_remaining(deadline, url))  # type: ignore[attr-defined]
        chunk = resp.read1(min(1 << 16, policy.max_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > policy.max_bytes:
            raise ImageLoadError("too_large", f"{url} is over the {policy.max_bytes:,}-byte limit")


def _resolve_allowed(host: str, port: int, policy: ImagePolicy) -> str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ImageLoadError("fetch_failed", f"cannot resolve host {host!r}: {exc.strerror}", transient=True) from None
    addresses = [info[4][0] for info in infos]
    if not policy.allow_private_urls:
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            if ip.version == 6 and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if not ip.is_global:
                raise ImageLoadError(
                    "url_blocked",
                    f"{host} resolves to non-public address {ip}; fetching private, loopback or link-local "
                    "addresses is refused (set ZSTAGGER_ALLOW_PRIVATE_URLS=1 to allow it on a trusted network)",
                )
    return addresses[0]


class _PinnedConnection:
    """http.client connections that connect to a pre-checked IP but speak to ``host``."""

    @staticmethod
    def make(scheme: str, host: str, port: int, address: str, timeout: float) -> http.client.HTTPConnection:
        cls = _PinnedHTTPS if scheme == "https" else _PinnedHTTP
        conn = cls(host, port, timeout=timeout)
        conn.pinned_address = address
        return conn


class _PinnedHTTP(http.client.HTTPConnection):
    pinned_address: str

    def connect(self) -> None:
        self.sock = self.pinned_socket = socket.create_connection((self.pinned_address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    pinned_address: str

    def connect(self) -> None:
        sock = socket.create_connection((self.pinned_address, self.port), self.timeout)
        self.sock = self.pinned_socket = self._context.wrap_socket(sock, server_hostname=self.host)
