"""Telling animations and videos from still images by their bytes (never by a file's extension).

:func:`sniff` reads magic numbers and, for the formats that can be either, the structure
that says whether there is more than one frame: a GIF's image descriptors, an APNG's
``acTL`` chunk (before ``IDAT``), an animated WebP's ``ANMF`` chunks. Video containers are
recognised by their signatures (ISO BMFF ``ftyp`` other than still-image brands, QuickTime
atoms, EBML for WebM/Matroska, AVI, FLV, Ogg, MPEG transport and program streams); what
they hold is PyAV's to find out (an audio-only file is a ``no_video_stream`` error later).

Pure functions over bytes; nothing here decodes a pixel.
"""

from __future__ import annotations

import struct
from typing import Literal

MediaKind = Literal["animation", "video"]
#: Returned when ``head`` ends before the answer (read the whole file and ask again).
NEED_MORE = "need_more"

_STILL_BRANDS = {b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"miaf",
                 b"jpeg", b"jpgs", b"avci", b"crx "}
_QUICKTIME_ATOMS = {b"moov", b"mdat", b"wide", b"pnot", b"free", b"skip"}
_PNG = b"\x89PNG\r\n\x1a\n"


def sniff(head: bytes, complete: bool = True) -> MediaKind | str | None:
    """``"animation"``, ``"video"``, None for anything else (a still image, or not media at all),
    or :data:`NEED_MORE` when ``head`` (not ``complete``) ends before the answer."""
    if head[:6] in (b"GIF87a", b"GIF89a"):
        frames, ended = count_gif_frames(head, 2)
        if frames < 2 and not ended and not complete:
            return NEED_MORE
        return "animation" if frames >= 2 else None
    if head[:8] == _PNG:
        return _apng(head, complete)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp(head, complete)
    if head[:4] == b"RIFF" and head[8:12] in (b"AVI ", b"AVIX"):
        return "video"
    if head[4:8] == b"ftyp":
        return None if head[8:12] in _STILL_BRANDS else "video"
    if head[4:8] in _QUICKTIME_ATOMS and len(head) >= 8 and struct.unpack(">I", head[:4])[0] >= 8:
        return "video"
    if head[:4] in (b"\x1a\x45\xdf\xa3", b"OggS") or head[:3] == b"FLV" or head[:4] == b"\x00\x00\x01\xba":
        return "video"
    if len(head) > 376 and head[0] == head[188] == head[376] == 0x47:  # MPEG-TS: a sync byte every 188 bytes
        return "video"
    return None


def count_gif_frames(data: bytes, stop_at: int) -> tuple[int, bool]:
    """How many frames (image descriptors) a GIF has, counting up to ``stop_at`` at most, and
    whether the count is final (the trailer, a stray byte or ``stop_at`` reached) rather than
    cut short by the end of ``data``. Walks blocks only (no LZW decoding): linear, and
    bounded by ``stop_at`` however many frames the file claims."""
    if len(data) < 13:
        return 0, False
    pos = 13
    flags = data[10]
    if flags & 0x80:
        pos += 3 << ((flags & 7) + 1)
    frames = 0
    size = len(data)
    while pos < size:
        block = data[pos]
        if block == 0x3B:  # trailer
            return frames, True
        if block == 0x21:  # extension: label, then sub-blocks
            pos = _skip_sub_blocks(data, pos + 2)
        elif block == 0x2C:  # image descriptor, optional local colour table, LZW code size, sub-blocks
            if pos + 10 > size:
                return frames, False
            frames += 1
            if frames >= stop_at:
                return frames, True
            local = data[pos + 9]
            pos += 10 + ((3 << ((local & 7) + 1)) if local & 0x80 else 0) + 1
            pos = _skip_sub_blocks(data, pos)
        else:  # garbage after the frames: what Pillow would stop at too
            return frames, True
        if pos < 0:
            return frames, False
    return frames, False


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    size = len(data)
    while pos < size:
        length = data[pos]
        pos += 1 + length
        if length == 0:
            return pos
    return -1


def _apng(head: bytes, complete: bool) -> MediaKind | str | None:
    pos = 8
    while pos + 8 <= len(head):
        length, kind = struct.unpack(">I4s", head[pos:pos + 8])
        if kind == b"acTL":
            if pos + 12 > len(head):
                break
            return "animation" if struct.unpack(">I", head[pos + 8:pos + 12])[0] > 1 else None
        if kind in (b"IDAT", b"IEND"):
            return None
        pos += 12 + length
    return None if complete else NEED_MORE


def _webp(head: bytes, complete: bool) -> MediaKind | str | None:
    if head[12:16] != b"VP8X":
        return None if len(head) >= 16 or complete else NEED_MORE
    if len(head) < 21:
        return None if complete else NEED_MORE
    if not head[20] & 0x02:  # the animation flag
        return None
    frames, pos = 0, 12
    while pos + 8 <= len(head):
        kind, length = head[pos:pos + 4], struct.unpack("<I", head[pos + 4:pos + 8])[0]
        if kind == b"ANMF":
            frames += 1
            if frames >= 2:
                return "animation"
        pos += 8 + length + (length & 1)
    return None if complete else NEED_MORE
