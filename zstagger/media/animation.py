"""Decoding animated GIF, APNG and WebP with Pillow, sampling the frames to judge.

Pillow composites each frame onto the logical screen (disposal and blending included) as
it seeks; frames are decoded in order, one at a time. Every frame is judged up to
``sample_frames`` of them; beyond that, ``sample_frames`` frames spread uniformly over the
frame numbers. Before a single frame is decoded: the logical screen (what Pillow
composites onto, whatever size the frames are) is checked against the pixel limits, and
the frame count (a GIF's counted from its blocks, not trusted from anywhere) against the
frame and total-pixel limits.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

from PIL import Image

from ..errors import ImageLoadError
from ..images.decode import to_rgb
from .frames import Frame, thumbnail
from .limits import DecodeMeter, MediaLimits
from .sniff import count_gif_frames
from .streams import FrameStream, metered

_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def open_animation(data: bytes, limits: MediaLimits, sample_frames: int) -> FrameStream:
    """The stream of an animation's sampled frames (see the module's docstring)."""
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageLoadError("too_many_pixels", f"the animation's logical screen is too large to composite frames on: {exc}") from None
    except Exception as exc:  # noqa: BLE001 (Pillow raises many kinds for a damaged header)
        raise ImageLoadError("invalid_media", f"could not read animation header: {exc}") from None
    width, height = im.size
    limits.check_frame_size(width, height, "the animation's logical screen")
    if im.format == "GIF":
        count, _ = count_gif_frames(data, limits.max_frames + 1)  # a file cut short: the frames it has
    else:
        try:
            count = int(getattr(im, "n_frames", 1))  # APNG: as declared (acTL); WebP: from its chunks
        except _DECODE_ERRORS as exc:
            raise ImageLoadError("invalid_media", f"could not read animation frames: {exc}") from None
    limits.check_frame_count(count)
    limits.check_total_pixels(count * width * height, f"its {count:,} frames of {width}x{height} are")
    stream = FrameStream("animation", DecodeMeter(limits))
    stream._frames = metered(stream, _frames(im, count, sample_frames, stream))
    return stream


def sampled_indices(count: int, sample_frames: int) -> set[int]:
    """Every frame number up to ``sample_frames`` frames, else that many spread evenly (first and last included)."""
    if count <= sample_frames:
        return set(range(count))
    if sample_frames == 1:
        return {0}
    return {round(i * (count - 1) / (sample_frames - 1)) for i in range(sample_frames)}


def _frames(im: Image.Image, count: int, sample_frames: int, stream: FrameStream) -> Iterator[Frame]:
    wanted = sampled_indices(count, sample_frames)
    at_ms = 0  # frame durations are whole milliseconds: summed exactly
    with im:
        for index in range(count):
            try:
                if index:
                    im.seek(index)
                stream.meter.frame(im.width, im.height, at_ms / 1000)
                picture = None
                if index in wanted:
                    picture = to_rgb(im)
                    picture = picture.copy() if picture is im else picture
            except EOFError:  # fewer frames than declared: what there was is judged
                stream.truncated = index < count
                break
            except ImageLoadError:
                raise
            except _DECODE_ERRORS as exc:
                if stream.meter.frames <= 1:
                    raise ImageLoadError("invalid_media", f"could not decode animation: {exc}") from None
                stream.truncated = True
                break
            shown = max(0, int(im.info.get("duration") or 0))
            if picture is not None:
                yield Frame(at_ms / 1000, picture, thumbnail(picture), index)
            at_ms += shown
            stream.duration = at_ms / 1000
