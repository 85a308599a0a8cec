"""The image-embedding cache: keys, fp16 values, two processes at once, a kill -9 mid-write,
and a tagger that skips decoding, the forward pass and even loading the model on hits."""

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from zstagger import Tagger
from zstagger.embedding_cache import EmbeddingKey, SQLiteImageCache
from zstagger.engine.locate import model_fingerprint
from zstagger.settings import Settings
from zstagger.testing import sample_image


def unit_rows(n, dim=32, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def key(i, model="m1", mode="fast"):
    return EmbeddingKey(hashlib.sha256(str(i).encode()).hexdigest(), model, mode)


def test_values_are_fp16_and_keys_separate_model_and_mode(tmp_path):
    cache = SQLiteImageCache(tmp_path / "c.sqlite3")
    vectors = unit_rows(3)
    cache.put_many([(key(i), vectors[i]) for i in range(3)])
    got = cache.get_many([key(0), key(1), key(2), key(3), key(0, model="m2"), key(0, mode="exact")])
    assert set(got) == {key(0), key(1), key(2)}
    for i in range(3):
        assert got[key(i)].dtype == np.float32
        np.testing.assert_array_equal(got[key(i)], vectors[i].astype(np.float16).astype(np.float32))
    cache.put_many([(key(0), -vectors[0])])  # already there: kept (every writer computes the same value)
    np.testing.assert_array_equal(cache.get_many([key(0)])[key(0)], got[key(0)])
    assert cache.count() == 3
    with sqlite3.connect(tmp_path / "c.sqlite3") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_damaged_cache_file_is_skipped_not_fatal(tmp_path, caplog):
    path = tmp_path / "c.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    cache = SQLiteImageCache(path)
    assert cache.get_many([key(0)]) == {}
    cache.put_many([(key(0), unit_rows(1)[0])])
    assert "going on without it" in caplog.text


WRITER = textwrap.dedent("""
    import hashlib, sys
    import numpy as np
    from zstagger.embedding_cache import EmbeddingKey, SQLiteImageCache

    def vector(i):
        v = np.random.default_rng(i).normal(size=64).astype(np.float32)
        return v / np.linalg.norm(v)

    cache = SQLiteImageCache(sys.argv[1])
    batch = 0
    while True:
        items = [(EmbeddingKey(hashlib.sha256(str(i).encode()).hexdigest(), "m", "fast"), vector(i))
                 for i in range(batch * 200, batch * 200 + 200)]
        cache.put_many(items)
        print(batch, flush=True)  # this batch is committed
        batch += 1
""")


def test_a_process_killed_mid_write_leaves_a_sound_cache(tmp_path):
    path = tmp_path / "c.sqlite3"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        committed = -1
        deadline = time.monotonic() + 60
        while committed < 20 and time.monotonic() < deadline:
            committed = int(writer.stdout.readline())
        writer.send_signal(signal.SIGKILL)  # in the middle of the next batches' writes
        writer.wait(10)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert committed >= 20
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    cache = SQLiteImageCache(path)
    keys = [EmbeddingKey(hashlib.sha256(str(i).encode()).hexdigest(), "m", "fast") for i in range((committed + 1) * 200)]
    got = cache.get_many(keys)
    assert len(got) == len(keys)  # every committed batch is there, whole
    assert cache.count() % 200 == 0  # and no batch is there in part
    for i in (0, 1234, len(keys) - 1):
        v = np.random.default_rng(i).normal(size=64).astype(np.float32)
        np.testing.assert_allclose(got[keys[i]], v / np.linalg.norm(v), atol=2e-3)
    cache.put_many([(key("after"), unit_rows(1, 64)[0])])  # and it takes writes again
    assert key("after") in cache.get_many([key("after")])


def write_jpegs(directory, count, size=(80, 60)):
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = directory / f"{i:02d}.jpg"
        sample_image(i, size).save(path, quality=90)
        paths.append(str(path))
    return paths


def test_cache_hits_skip_decoding_and_the_model(tiny_model_dir, tmp_path):
    paths = write_jpegs(tmp_path / "img", 9)
    settings = Settings(cache_dir=str(tmp_path / "cache"))
    with Tagger(str(tiny_model_dir), device="cpu", precision="fp32", batch_size=4, settings=settings, image_cache=True) as cold:
        assert not cold.model_loaded  # waits for the first miss
        first = cold.tag(paths, taxonomy="moderation")
        assert cold.model_loaded and cold.cache_stats() == {"hits": 0, "misses": 9}
    shutil.copy(paths[0], tmp_path / "renamed-copy.jpg")  # same bytes, another name: a hit too
    with Tagger(str(tiny_model_dir), device="cpu", precision="fp32", batch_size=4, settings=settings, image_cache=True) as warm:
        second = warm.tag([*paths, str(tmp_path / "renamed-copy.jpg")], taxonomy="moderation")
        assert warm.cache_stats() == {"hits": 10, "misses": 0}
        assert not warm.model_loaded  # scalars and text embeddings came from the cache as well
    for a, b in zip(first, second):  # the same embeddings (up to BLAS rounding between batch shapes)
        assert a.tags == b.tags and [s.label for s in a.scores] == [s.label for s in b.scores]
        np.testing.assert_allclose([s.score for s in a.scores], [s.score for s in b.scores], atol=1e-6)
    np.testing.assert_allclose([s.score for s in second[9].scores], [s.score for s in second[0].scores], atol=1e-6)
    # fp16 storage moves scores by far less than anything a threshold cares about
    with Tagger(str(tiny_model_dir), device="cpu", precision="fp32", settings=Settings(cache_dir="")) as plain:
        uncached = plain.tag(paths, taxonomy="moderation")
    gap = max(abs(a.score - b.score) for x, y in zip(first, uncached) for a, b in zip(x.scores, y.scores))
    assert gap < 5e-3


def test_the_tagger_takes_any_store_with_get_many_and_put_many(tiny_model_dir, tmp_path):
    class DictStore:  # what an embedding store (SQLite, PostgreSQL) provides
        def __init__(self):
            self.rows = {}

        def get_many(self, keys):
            return {k: self.rows[k] for k in keys if k in self.rows}

        def put_many(self, items):
            self.rows.update(items)

    paths = write_jpegs(tmp_path / "img", 5)
    store = DictStore()
    tagger = Tagger(str(tiny_model_dir), device="cpu", precision="fp32", image_cache=store, settings=Settings(cache_dir=""))
    tagger.tag(paths, labels=["a", "b"])
    fingerprint = model_fingerprint(str(tiny_model_dir))
    assert {k.model for k in store.rows} == {fingerprint} and {k.mode for k in store.rows} == {"fast"}
    assert {k.sha256 for k in store.rows} == {hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}
    tagger.tag(paths, labels=["a", "b"])
    assert tagger.cache_stats() == {"hits": 5, "misses": 5}


def test_plain_tagging_leaves_the_image_cache_off_unless_asked(tiny_model_dir, clean_env):
    assert Tagger(str(tiny_model_dir), device="cpu").image_cache is None
    clean_env.setenv("ZSTAGGER_IMAGE_CACHE", "1")
    assert isinstance(Tagger(str(tiny_model_dir), device="cpu").image_cache, SQLiteImageCache)


def test_model_fingerprint_needs_no_transformers_and_matches_the_loaded_model(tiny_model_dir, tmp_path):
    from zstagger.engine.model import ClipEncoder

    script = f"import sys; from zstagger.engine.locate import model_fingerprint; print(model_fingerprint({str(tiny_model_dir)!r})); " \
             "print('transformers' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert out[1:] == ["False", "False"]
    assert out[0] == ClipEncoder.load(str(tiny_model_dir), device="cpu", precision="fp32").fingerprint
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    processor = next(p for p in os.listdir(copy) if "processor" in p and p.endswith(".json"))
    text = (copy / processor).read_text()
    (copy / processor).write_text(text.replace('"crop_size"', '"crop_size" ', 1) if '"crop_size"' in text else text + " ")
    assert model_fingerprint(str(copy)) != model_fingerprint(str(tiny_model_dir))  # a changed processor: new key


def test_unchanged_files_are_not_read_again_and_edited_ones_are(tiny_model_dir, tmp_path, monkeypatch):
    import zstagger.embedder as tagger_module  # where images are read and hashed (moved from zstagger.tagger)

    paths = write_jpegs(tmp_path / "img", 6)
    cache = SQLiteImageCache(tmp_path / "c.sqlite3")
    reads = []
    original = tagger_module.read_bytes  # (through the image sources since they came: zstagger.sources.read_bytes)
    monkeypatch.setattr(tagger_module, "read_bytes", lambda ref, policy: reads.append(ref) or original(ref, policy))
    make = lambda: Tagger(str(tiny_model_dir), device="cpu", precision="fp32", image_cache=cache,
                          settings=Settings(cache_dir=str(tmp_path / "cache")))
    first = make().tag(paths, labels=["a", "b"])
    assert sorted(reads) == sorted(paths)
    reads.clear()
    warm = make()
    assert [r.scores for r in warm.tag(paths, labels=["a", "b"])] == [r.scores for r in first]
    assert reads == [] and warm.cache_stats() == {"hits": 6, "misses": 0}  # no image byte read
    # Same size, modification time set back: the change time still moves, so it is read again.
    st = os.stat(paths[2])
    other = (tmp_path / "img" / "03.jpg").read_bytes()
    with open(paths[2], "r+b") as fh:
        fh.write(other[: st.st_size].ljust(st.st_size, b"\0"))
    os.utime(paths[2], ns=(st.st_atime_ns, st.st_mtime_ns))
    again = make()
    results = again.tag(paths, labels=["a", "b"])
    assert reads == [paths[2]]
    assert results[2].scores != first[2].scores or results[2].error is not None
