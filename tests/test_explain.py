"""Where in the image: the heat map lands on the quadrant that holds the label's content.

A label learns its content from example images on the real tiny model (few-shot); test
images put that content in one quadrant and clutter in the other three. The Python API,
``zstagger explain`` and ``POST /v1/explain`` (a real server) all put the heat there."""

import base64
import io
import json

import httpx
import numpy as np
import pytest
from harness import ApiServer, run_cli
from PIL import Image

from zstagger import Taxonomy
from zstagger.explain import explain_image
from zstagger.service.auth import hash_key
from zstagger.synthetic import labelled_image
from zstagger.tagger import Tagger

KEY = "zst_explain-key"
CORNERS = [(0, 0), (96, 0), (0, 96), (96, 96)]  # top-left, top-right, bottom-left, bottom-right


@pytest.fixture(scope="module")
def taxonomy_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain-tax")
    for i in range(6):
        labelled_image([0], seed=100 + i, size=(96, 96)).save(root / f"target{i}.png")
        labelled_image([], seed=200 + i, size=(96, 96)).save(root / f"clutter{i}.png")
    spec = {"name": "quadrants", "labels": [
        {"name": "target", "examples": [f"target{i}.png" for i in range(6)]},
        {"name": "clutter", "examples": [f"clutter{i}.png" for i in range(6)]},
    ], "few_shot": {"method": "blend", "weight": 0.9}}
    (root / "quadrants.json").write_text(json.dumps(spec))
    return root


def scene(quadrant, seed):
    canvas = Image.new("RGB", (192, 192))
    for k, corner in enumerate(CORNERS):
        part = (labelled_image([0], seed=300 + seed, size=(96, 96)) if k == quadrant
                else labelled_image([], seed=400 + 4 * seed + k, size=(96, 96)))
        canvas.paste(part, corner)
    return canvas


def quadrant_heat(grid):
    g = np.asarray(grid)
    half = g.shape[0] // 2
    return [g[:half, :half].mean(), g[:half, half:].mean(), g[half:, :half].mean(), g[half:, half:].mean()]


def test_heat_lands_in_the_quadrant_that_shows_the_label(tiny_model_dir, taxonomy_dir):
    taxonomy = Taxonomy.from_file(taxonomy_dir / "quadrants.json")
    with Tagger(str(tiny_model_dir), device="cpu", precision="fp32", image_cache=False) as tagger:
        for quadrant in range(4):
            for seed in range(2):
                heatmap, picture = explain_image(tagger, scene(quadrant, seed), taxonomy, "target")
                heat = quadrant_heat(heatmap.grid)
                assert int(np.argmax(heat)) == quadrant, (quadrant, seed, heat)
                assert heat[quadrant] > max(h for k, h in enumerate(heat) if k != quadrant) + 0.2
                row, col = heatmap.hottest_cell()
                assert (row >= 2, col >= 2) == (quadrant >= 2, quadrant % 2 == 1)
                assert heatmap.label == "target" and heatmap.windows == 9 and len(heatmap.grid) == 4
        # without --label: the first tag, else the best-scoring label
        heatmap, _ = explain_image(tagger, scene(0, 0), taxonomy)
        result = tagger.tag([scene(0, 0)], taxonomy)[0]
        assert heatmap.label == (result.tags[0] if result.tags else result.scores[0].label)


def test_sparse_windows_cover_every_cell_and_still_find_the_quadrant(tiny_model_dir, taxonomy_dir):
    from zstagger.engine.heatmap import window_cells

    for grid in range(2, 9):
        dense, sparse = window_cells(grid), window_cells(grid, sparse=True)
        assert set(sparse) <= set(dense) and len(sparse) <= len(dense)
        covered = np.zeros((grid, grid), dtype=int)
        for row, col, span in sparse:
            covered[row:row + span, col:col + span] += 1
        assert covered.min() >= 1, grid
    assert window_cells(4, sparse=True) == [(0, 0, 2), (0, 2, 2), (1, 1, 2), (2, 0, 2), (2, 2, 2)]
    taxonomy = Taxonomy.from_file(taxonomy_dir / "quadrants.json")
    with Tagger(str(tiny_model_dir), device="cpu", precision="fp32", image_cache=False) as tagger:
        for quadrant in range(4):
            heatmap, _ = explain_image(tagger, scene(quadrant, 0), taxonomy, "target", sparse=True)
            heat = quadrant_heat(heatmap.grid)
            assert int(np.argmax(heat)) == quadrant and heatmap.windows == 5, (quadrant, heat)
            assert heat[quadrant] > max(h for k, h in enumerate(heat) if k != quadrant) + 0.2


def test_cli_writes_the_overlay_and_prints_the_grid(tiny_model_dir, taxonomy_dir, tmp_path):
    picture = tmp_path / "scene.png"
    scene(3, 1).save(picture)
    env = {"ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_PRECISION": "fp32", "ZSTAGGER_TAXONOMY_PATH": str(taxonomy_dir)}
    result = run_cli("explain", str(picture), "-t", "quadrants", "--label", "target", "-o", str(tmp_path / "o.png"), env=env)
    assert result.returncode == 0, result.stderr
    heatmap = json.loads(result.stdout)
    assert int(np.argmax(quadrant_heat(heatmap["grid"]))) == 3
    overlay = Image.open(tmp_path / "o.png")
    assert overlay.format == "PNG" and overlay.size == (192, 192)
    # the overlay is reddest where the heat is: bottom-right
    pixels = np.asarray(overlay.convert("RGB")).astype(int)
    redness = pixels[..., 0] - pixels[..., 2]
    assert redness[96:, 96:].mean() > redness[:96, :96].mean()
    bad = run_cli("explain", str(picture), "-t", "quadrants", "--label", "nope", env=env)
    assert bad.returncode == 2 and "has no label 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    missing = run_cli("explain", str(tmp_path / "absent.png"), "-t", "quadrants", env=env)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1


def test_http_explain_answers_json_and_png(tiny_model_dir, taxonomy_dir, tmp_path):
    env = {"ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_PRECISION": "fp32", "ZSTAGGER_TAXONOMY_PATH": str(taxonomy_dir),
           "ZSTAGGER_API_KEYS": hash_key(KEY)}
    server = ApiServer(env, tmp_path).wait_ready()
    try:
        buf = io.BytesIO()
        scene(1, 0).save(buf, format="PNG")
        image = {"base64": base64.b64encode(buf.getvalue()).decode(), "name": "scene.png"}
        headers = {"Authorization": f"Bearer {KEY}"}
        body = {"image": image, "taxonomy": "quadrants", "label": "target"}
        answer = httpx.post(server.url + "/v1/explain", json=body, headers=headers, timeout=60)
        assert answer.status_code == 200, answer.text
        data = answer.json()
        assert data["image"] == "scene.png" and data["label"] == "target" and data["method"] == "window scoring"
        assert int(np.argmax(quadrant_heat(data["grid"]))) == 1
        png = httpx.post(server.url + "/v1/explain", json={**body, "format": "png"}, headers=headers, timeout=60)
        assert png.headers["content-type"] == "image/png" and Image.open(io.BytesIO(png.content)).size == (192, 192)
        both = httpx.post(server.url + "/v1/explain", json={**body, "format": "both", "grid": 3}, headers=headers, timeout=60)
        assert len(both.json()["grid"]) == 3 and base64.b64decode(both.json()["overlay_png"])[:4] == b"\x89PNG"
        sparse = httpx.post(server.url + "/v1/explain", json={**body, "sparse": True}, headers=headers, timeout=60).json()
        assert sparse["windows"] == 5 and int(np.argmax(quadrant_heat(sparse["grid"]))) == 1
        assert httpx.post(server.url + "/v1/explain", json=body, timeout=10).status_code == 401
        wrong = httpx.post(server.url + "/v1/explain", json={**body, "label": "nope"}, headers=headers, timeout=10)
        assert wrong.status_code == 400 and "has no label 'nope'" in wrong.json()["error"]["message"]
        broken = httpx.post(server.url + "/v1/explain", json={**body, "image": {"base64": base64.b64encode(b"not an image").decode()}},
                            headers=headers, timeout=10)
        assert broken.status_code == 422 and broken.json()["error"]["message"]
        assert httpx.post(server.url + "/v1/explain", json={**body, "grid": 50}, headers=headers, timeout=10).status_code == 422
    finally:
        server.stop()
    assert "Traceback" not in server.log_path.read_text()
