"""Reading images: modes, EXIF, bombs, broken files, directories and URLs (on a loopback server)."""

import http.server
import io
import time

import numpy as np
import pytest
from PIL import Image

from harness import serve_loopback
from zstagger import ImageLoadError
from zstagger.images import ImagePolicy, describe, expand_inputs, fetch_url, load_image, to_rgb
from zstagger.testing import sample_image


def png_bytes(image):
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1", "I;16", "I", "F", "YCbCr"])
def test_every_mode_becomes_rgb(mode):
    image = sample_image(0, (40, 30)).convert(mode) if mode not in ("I;16", "I", "F") else Image.new(mode, (40, 30))
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == (40, 30)


def test_sixteen_bit_images_are_scaled_not_clipped():
    arr = np.full((10, 10), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    sixteen = Image.fromarray(arr)
    assert sixteen.mode.startswith("I;16")
    out = np.asarray(to_rgb(sixteen))
    assert out.shape == (10, 10, 3) and abs(int(out[0, 0, 0]) - 128) <= 1
    out_i = np.asarray(to_rgb(Image.fromarray(arr.astype(np.int32), "I")))
    assert abs(int(out_i[0, 0, 0]) - 128) <= 1


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    assert np.asarray(to_rgb(rgba))[0, 0].tolist() == [255, 255, 255]
    palette = Image.new("P", (4, 4), 0)
    palette.info["transparency"] = 0
    assert np.asarray(to_rgb(palette))[0, 0].tolist() == [255, 255, 255]


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (8, 8), color) for color in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = load_image(buf.getvalue())
    r, g, b = np.asarray(out)[4, 4]
    assert r > 200 and b < 50


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (60, 20), (0, 128, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes())
    assert load_image(path).size == (20, 60)


def test_decompression_bombs_are_refused_before_decoding():
    data = png_bytes(Image.new("L", (400, 300)))
    with pytest.raises(ImageLoadError) as info:
        load_image(data, ImagePolicy(max_pixels=100_000))
    assert info.value.kind == "too_many_pixels" and "ZSTAGGER_MAX_IMAGE_PIXELS" in info.value.message


def test_broken_inputs_raise_image_load_errors(tmp_path):
    (tmp_path / "fake.jpg").write_bytes(b"this is not a jpeg")
    jpeg = io.BytesIO()
    sample_image(0, (200, 200)).save(jpeg, format="JPEG")
    (tmp_path / "truncated.jpg").write_bytes(jpeg.getvalue()[:300])
    cases = {tmp_path / "missing.png": "not_found", tmp_path / "fake.jpg": "invalid_image",
             tmp_path / "truncated.jpg": "invalid_image"}
    for path, kind in cases.items():
        with pytest.raises(ImageLoadError) as info:
            load_image(path)
        assert info.value.kind == kind and not info.value.transient


def test_directories_expand_recursively_sorted_images_only(image_dir):
    found = list(expand_inputs([str(image_dir), "http://example.com/x.jpg", b"raw"]))
    names = [str(p).removeprefix(str(image_dir)) for p in found[:3]]
    assert names == ["/a.jpg", "/b.png", "/sub/c.png"]
    assert found[3:] == ["http://example.com/x.jpg", b"raw"]


def test_describe_identifies_every_kind_of_input():
    assert describe("a/b.jpg") == "a/b.jpg"
    assert describe(b"abc").startswith("bytes:sha256:")
    assert describe(sample_image(0)).startswith("pil:")


# --- URLs, against a real HTTP server on 127.0.0.1 ---


class Handler(http.server.BaseHTTPRequestHandler):
    image = png_bytes(sample_image(5, (50, 40)))

    def do_GET(self):
        if self.path == "/img.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(self.image)))
            self.end_headers()
            self.wfile.write(self.image)
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/img.png")
            self.end_headers()
        elif self.path == "/slow":
            self.send_response(200)
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.05)
        elif self.path == "/huge":
            self.send_response(200)
            self.end_headers()  # no Content-Length: the cap must apply while reading
            self.wfile.write(b"\0" * 300_000)
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd, url = serve_loopback(Handler)
    yield url
    httpd.shutdown()


TRUSTED = ImagePolicy(allow_private_urls=True, url_timeout=5)


def test_private_addresses_are_blocked_by_default(server):
    with pytest.raises(ImageLoadError) as info:
        load_image(f"{server}/img.png")
    assert info.value.kind == "url_blocked" and "ZSTAGGER_ALLOW_PRIVATE_URLS" in info.value.message
    for url in ["http://localhost/x.png", "http://169.254.169.254/latest/meta-data", "http://[::1]/x", "http://10.0.0.1/x"]:
        with pytest.raises(ImageLoadError, match="non-public address"):
            fetch_url(url)


def test_url_fetch_with_redirects_when_allowed(server):
    assert load_image(f"{server}/img.png", TRUSTED).size == (50, 40)
    assert load_image(f"{server}/redirect", TRUSTED).size == (50, 40)


def test_url_errors_have_kinds(server):
    with pytest.raises(ImageLoadError) as info:
        fetch_url(f"{server}/missing", TRUSTED)
    assert info.value.kind == "fetch_failed" and "404" in info.value.message and not info.value.transient
    with pytest.raises(ImageLoadError) as info:
        fetch_url(f"{server}/huge", ImagePolicy(allow_private_urls=True, max_bytes=100_000))
    assert info.value.kind == "too_large"
    start = time.monotonic()
    with pytest.raises(ImageLoadError) as info:
        fetch_url(f"{server}/slow", ImagePolicy(allow_private_urls=True, url_timeout=0.5))
    assert info.value.kind == "fetch_timeout" and info.value.transient
    assert time.monotonic() - start < 1.5  # the timeout bounds the whole download
    with pytest.raises(ImageLoadError) as info:
        fetch_url("http://127.0.0.1:1/x.png", TRUSTED)  # nothing listens on port 1
    assert info.value.kind == "fetch_failed" and info.value.transient
    with pytest.raises(ImageLoadError, match="not an http"):
        fetch_url("ftp://example.com/x.png")


def test_a_batch_with_broken_inputs_tags_the_rest(tiny_tagger, image_dir, server):
    inputs = [str(image_dir), str(image_dir / "missing.jpg"), b"garbage", f"{server}/img.png", sample_image(9)]
    results = tiny_tagger.tag(inputs, labels=["a", "b"])
    assert [r.error.type if r.error else None for r in results] == [
        None, None, None, "not_found", "invalid_image", "url_blocked", None]
    for r in results:
        assert (r.scores == []) == (r.error is not None)


def test_strip_wise_conversion_equals_the_whole_image_formula():
    """Transparency and 16-bit/float scaling run in strips; pixel for pixel, the result is the
    whole-image conversion (the one transformers' convert_to_rgb does for transparency)."""
    rng = np.random.default_rng(1)
    width, height = 1100, 1000  # more than one strip
    white = Image.new("RGBA", (width, height), (255, 255, 255, 255))
    rgba = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA")
    palette = rgba.convert("RGB").convert("P")
    palette.info["transparency"] = 3
    for image in (rgba, rgba.convert("LA"), palette):
        expected = Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
        assert np.array_equal(np.asarray(to_rgb(image)), np.asarray(expected)), image.mode
    sixteen = rng.integers(0, 65536, (height, width), dtype=np.uint16)
    expected = np.clip(np.rint(sixteen / 257.0), 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(sixteen))), np.dstack([expected] * 3))
    floats = (rng.random((height, width)) * 3000).astype(np.float32)  # over 255: scaled by 255 / peak
    expected = np.clip(np.rint(floats.astype(np.float64) * (255.0 / floats.max())), 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(floats, "F"))), np.dstack([expected] * 3))


def test_image_files_over_the_byte_limit_are_refused_before_reading(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(sample_image(0, (300, 300))))
    with pytest.raises(ImageLoadError) as info:
        load_image(path, ImagePolicy(max_bytes=1000))
    assert info.value.kind == "too_large" and "ZSTAGGER_MAX_IMAGE_BYTES" in info.value.message
