"""Counting a JPEG's scans before decoding it: the guard against progressive scan bombs.

Decoding work grows with scans x pixels: each scan makes libjpeg walk every block it covers
again, and a refinement scan of a flat image costs a few bytes. A few hundred KB of
repeated scans keep a decoder busy for minutes. libjpeg-turbo's tools take ``-maxscans``
for this, but Pillow offers no such knob, so the markers are walked here first (segment
lengths up to each SOS, then the entropy-coded data, where ``FF 00`` is a stuffed byte and
``FF D0``-``FF D7`` are restart markers, not segment markers).
"""

from __future__ import annotations

import re

_SOI, _EOI, _SOS, _TEM = 0xD8, 0xD9, 0xDA, 0x01
# In entropy-coded data, 0xFF followed by a byte that is neither a stuffed zero, a restart
# marker nor another 0xFF (a fill byte) starts the next segment. (A pattern that starts with
# a literal byte lets the regex engine skip ahead at C speed.)
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def count_scans(data: bytes, limit: int) -> int:
    """Start-of-scan markers in the first image of ``data``; counting stops at ``limit + 1``.

    Damaged or truncated data ends the walk early; the decoder reports what is wrong with it.
    """
    if data[:2] != b"\xff\xd8":
        return 0
    end, pos, scans = len(data), 2, 0
    while pos + 1 < end and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte before the marker
            pos += 1
            continue
        pos += 2
        if marker == _EOI:
            break
        if 0xD0 <= marker <= 0xD7 or marker in (_TEM, _SOI):  # no length field
            continue
        if pos + 2 > end:
            break
        length = data[pos] << 8 | data[pos + 1]
        if length < 2:
            break
        pos += length
        if marker == _SOS:
            scans += 1
            if scans > limit:
                break
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                break
            pos = found.start()
    return scans
