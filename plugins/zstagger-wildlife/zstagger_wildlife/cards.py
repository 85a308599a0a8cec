"""Camera-trap memory cards as an image source: ``camtrap://CARD/PATH``.

Field teams copy each card to a zip archive (``<card>.zip``) in one directory,
``WILDLIFE_CARDS``. ``camtrap://site-07-2024-05/DCIM/IMG_0001.JPG`` is one image
on one card; ``camtrap://site-07-2024-05/`` every image on it (listed in name order, a page
at a time). Members over the size cap are refused before they are decompressed.
"""

from __future__ import annotations

import os
import zipfile

from zstagger import ImageLoadError, hookimpl
from zstagger.sources import ObjectInfo

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class CardSource:
    schemes = ("camtrap",)

    def _archive(self, url: str) -> tuple[str, str, str]:
        card, _, member = url[len("camtrap://"):].partition("/")
        if not card or card in (".", "..") or "/" in card or "\\" in card:
            raise ImageLoadError("invalid_url", f"{url}: no card name")
        root = os.environ.get("WILDLIFE_CARDS", ".")
        return os.path.join(root, f"{card}.zip"), card, member

    def open(self, url: str, request) -> bytes:
        path, _, member = self._archive(url)
        try:
            with zipfile.ZipFile(path) as archive:
                info = archive.getinfo(member)
                if info.is_dir():
                    raise ImageLoadError("not_a_file", f"{url} is a folder on the card")
                if info.file_size > request.max_bytes:
                    raise ImageLoadError("too_large", f"{url} is {info.file_size:,} bytes, over the "
                                         f"{request.max_bytes:,}-byte limit")
                return archive.read(info)
        except FileNotFoundError:
            raise ImageLoadError("not_found", f"no card archive for {url} in WILDLIFE_CARDS") from None
        except KeyError:
            raise ImageLoadError("not_found", f"no such image on the card: {url}") from None

    def version(self, url: str, request) -> str:
        path, _, member = self._archive(url)
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(member)
            return f"{info.CRC}:{info.file_size}"

    def list(self, prefix: str, page_size: int, start_after: str | None = None):
        path, card, inside = self._archive(prefix)
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist()
                       if info.filename.startswith(inside) and info.filename.lower().endswith(IMAGE_SUFFIXES)]
            found = [ObjectInfo(f"camtrap://{card}/{info.filename}", info.file_size, f"{info.CRC}:{info.file_size}")
                     for info in sorted(members, key=lambda info: info.filename)]
        found = [item for item in found if start_after is None or item.url > start_after]
        for first in range(0, len(found), page_size):
            yield found[first:first + page_size]


@hookimpl
def register_image_sources(register):
    register(CardSource())
