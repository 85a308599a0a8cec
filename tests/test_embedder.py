"""The embedder (one image to one vector) and the pipeline that schedules it: collaborators
written to the documented protocols plug in, cache routes say where images go, each call
returns its own figures, and a stream's records reach the store on a timer."""

import inspect
import time

import numpy as np
import pytest

from zstagger import Tagger
from zstagger.embedder import NO_CACHE, CacheRoute, Embedder, Figures, ImageEncoder, SightingBuffer
from zstagger.embedding_cache import EmbeddingKey, ImageEmbeddingCache, ImageRecorder, ImageSighting, SQLiteImageCache
from zstagger.pipeline import Pipeline
from zstagger.settings import Settings
from zstagger.testing import sample_image


def write_jpegs(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i:02d}.jpg"
        sample_image(i, (96, 72)).save(path, quality=90)
        paths.append(str(path))
    return paths


class DocumentedRecorder:
    """An embedding store written exactly to the documented ImageRecorder protocol, nothing more:
    its methods' signatures are checked against the protocol's below."""

    def __init__(self):
        self.vectors: dict[EmbeddingKey, np.ndarray] = {}
        self.records: list[tuple[str, str, str, bool]] = []  # (reference, job, model name, new vector)

    def get_many(self, keys):
        return {key: self.vectors[key] for key in keys if key in self.vectors}

    def put_many(self, items):
        for key, vector in items:
            self.vectors.setdefault(key, vector)

    def record(self, sightings, model_name):
        for s in sightings:
            if s.vector is not None:
                self.vectors.setdefault(s.key, s.vector)
            self.records.append((s.reference, s.job_id, model_name, s.vector is not None))
        return 0


def test_the_documented_recorder_protocol_is_what_the_tagger_calls(tiny_model_dir, tmp_path):
    for name in ("get_many", "put_many", "record"):
        documented = inspect.signature(getattr(ImageRecorder, name))
        assert list(inspect.signature(getattr(DocumentedRecorder, name)).parameters) == list(documented.parameters), name
    recorder = DocumentedRecorder()
    assert isinstance(recorder, ImageRecorder)
    paths = write_jpegs(tmp_path / "img", 5)
    with Tagger(str(tiny_model_dir), device="cpu", precision="fp32", batch_size=2, image_cache=recorder,
                settings=Settings(cache_dir="")) as tagger:
        first = tagger.tag(paths, labels=["a", "b"], job_id="job-1")
        again = tagger.tag(paths, labels=["a", "b"], job_id="job-2")
        assert tagger.cache_stats() == {"hits": 5, "misses": 5}
    assert all(r.error is None for r in first + again)
    # This recorder keeps float32 (the built-in stores keep fp16): scores agree to rounding.
    assert [[(s.label, pytest.approx(s.score, abs=1e-4)) for s in r.scores] for r in again] == [
        [(s.label, s.score) for s in r.scores] for r in first]
    assert sorted(recorder.records) == sorted(
        [(p, "job-1", str(tiny_model_dir), True) for p in paths] + [(p, "job-2", str(tiny_model_dir), False) for p in paths])


def test_a_plain_cache_written_to_the_protocol_is_not_asked_to_record(tiny_model_dir, tmp_path):
    class DocumentedCache:
        def __init__(self):
            self.vectors = {}

        def get_many(self, keys):
            return {key: self.vectors[key] for key in keys if key in self.vectors}

        def put_many(self, items):
            self.vectors.update(items)

    for name in ("get_many", "put_many"):
        assert list(inspect.signature(getattr(DocumentedCache, name)).parameters) == list(
            inspect.signature(getattr(ImageEmbeddingCache, name)).parameters)
    cache = DocumentedCache()
    route = CacheRoute.of(cache)
    assert route.cache is cache and not route.records and route.recorder is None
    with Tagger(str(tiny_model_dir), device="cpu", precision="fp32", image_cache=cache, settings=Settings(cache_dir="")) as tagger:
        tagger.tag(write_jpegs(tmp_path / "img", 3), labels=["a", "b"])
    assert len(cache.vectors) == 3


def test_each_call_returns_its_own_figures_and_routes_say_where_images_go(tiny_model_dir, tmp_path):
    paths = write_jpegs(tmp_path / "img", 4)
    embedder = Embedder(str(tiny_model_dir), device="cpu", precision="fp32", lazy=True)
    assert not embedder.model_loaded  # a cache may make the model unnecessary: it waits for the first miss
    route = CacheRoute.of(SQLiteImageCache(tmp_path / "cache.sqlite3"))
    assert not route.records
    cold = embedder.embed([embedder.prepare(p, route) for p in paths], route)
    assert (cold.hits, cold.misses, cold.vectors.shape[0]) == (0, 4, 4) and embedder.model_loaded
    warm = embedder.embed([embedder.prepare(p, route) for p in paths], route)
    assert (warm.hits, warm.misses) == (4, 0)
    np.testing.assert_array_equal(warm.vectors, cold.vectors)  # a hit reads back what the miss kept
    bare = embedder.embed([embedder.prepare(p, NO_CACHE) for p in paths], NO_CACHE)
    assert (bare.hits, bare.misses) == (0, 0)  # no cache on the route: nothing to count
    np.testing.assert_allclose(bare.vectors, cold.vectors, atol=2e-3)  # fp16 rounding only
    assert embedder.prepare(str(tmp_path / "missing.jpg"), route).kind == "not_found"


def test_the_tagger_counts_only_its_own_route(tiny_model_dir, tmp_path):
    """Example images go through the examples cache: not counted as the tagger's hits or misses."""
    paths = write_jpegs(tmp_path / "img", 3)
    store = DocumentedRecorder()
    with Tagger(str(tiny_model_dir), device="cpu", precision="fp32", image_cache=store,
                settings=Settings(cache_dir=str(tmp_path / "cache"))) as tagger:
        vectors = tagger.embed_images(paths)
        assert len(vectors) == 3 and tagger.cache_stats() == {"hits": 0, "misses": 0}
        assert store.records == []  # example images are not images tagged
        tagger.tag(paths, labels=["a", "b"])
        assert tagger.cache_stats() == {"hits": 0, "misses": 3} and len(store.records) == 3


class NumpyRuntime:
    """Another model runtime, written to the ImageEncoder protocol: numpy arrays out (as an
    OpenVINO runtime gives), computed here by the torch model it wraps."""

    def __init__(self, inner):
        self.inner = inner
        self.fingerprint = inner.fingerprint + "+numpy"
        self.logit_scale, self.logit_bias, self.uses_sigmoid = inner.logit_scale, inner.logit_bias, inner.uses_sigmoid
        self.device = "cpu"
        self.planned = None

    @property
    def min_decode_size(self):
        return self.inner.min_decode_size

    def preprocess(self, image, exact):
        return self.inner.preprocess(image, exact)

    def encode_images(self, pixels):
        return self.inner.encode_images(pixels).numpy()

    def encode_text(self, prompts):
        return self.inner.encode_text(prompts).numpy()

    def plan_lanes(self, lanes):
        self.planned = lanes
        return lanes or 1


def test_another_runtime_plugs_in_without_touching_the_embedder(tiny_model_dir, tmp_path):
    from zstagger.engine.model import ClipEncoder

    for name in ("preprocess", "encode_images", "encode_text", "plan_lanes"):
        assert list(inspect.signature(getattr(NumpyRuntime, name)).parameters) == list(
            inspect.signature(getattr(ImageEncoder, name)).parameters), name
    paths = write_jpegs(tmp_path / "img", 3)
    loads = []

    def load(model, device, precision):
        loads.append((model, device, precision))
        return NumpyRuntime(ClipEncoder.load(model, device=device, precision=precision))

    runtime = Embedder(str(tiny_model_dir), device="cpu", precision="fp32", lanes=2, load=load)
    assert loads == [(str(tiny_model_dir), "cpu", "fp32")] and runtime.lanes == 2 and runtime.encoder.planned == 2
    assert runtime.fingerprint.endswith("+numpy")
    torch_side = Embedder(str(tiny_model_dir), device="cpu", precision="fp32")
    ours = runtime.embed([runtime.prepare(p, NO_CACHE) for p in paths], NO_CACHE).vectors
    theirs = torch_side.embed([torch_side.prepare(p, NO_CACHE) for p in paths], NO_CACHE).vectors
    assert isinstance(ours, np.ndarray)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_a_stream_s_records_are_written_on_a_timer_and_in_one_write_when_a_chunk_fills():
    recorder = DocumentedRecorder()
    writes = []
    original = recorder.record
    recorder.record = lambda sightings, model_name: writes.append(len(sightings)) or original(sightings, model_name)
    key = EmbeddingKey("0" * 64, "model", "fast")
    seen = lambda n: [ImageSighting(key, f"/img/{i}.jpg", "", None) for i in range(n)]
    figures = Figures()
    buffer = SightingBuffer(recorder, "m", figures, every=10, seconds=0.3)
    buffer.add(seen(3))
    assert writes == []
    deadline = time.monotonic() + 5
    while not writes and time.monotonic() < deadline:
        time.sleep(0.02)
    assert writes == [3]  # the timer wrote them, nobody flushed
    buffer.add(seen(10))  # a full chunk: written at once, in one write
    deadline = time.monotonic() + 5
    while len(writes) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert writes == [3, 10]
    buffer.add(seen(2))
    assert buffer.flush() == 0 and writes == [3, 10, 2]  # what is left, at once
    assert buffer.flush() == 0 and writes == [3, 10, 2]  # nothing waiting: no write
    assert figures.unrecorded == 0


def test_the_pipeline_keeps_input_order_and_reports_errors_per_input():
    from zstagger.errors import ImageLoadError

    class Stages:
        def prepare(self, item):
            time.sleep(0.001 * (item % 7))  # loads finish out of order
            return ImageLoadError("not_found", f"no {item}") if item % 5 == 0 else item

        def embed(self, ready):
            return np.array([[float(x)] for x in ready], dtype=np.float32)

    pipeline = Pipeline(3, lambda: 2)
    try:
        seen, errors = [], []
        for items, vectors, errs in pipeline.run(range(23), Stages(), 4):
            rows = iter(vectors if vectors is not None else [])
            seen += [(i, None if e else int(next(rows)[0])) for i, e in zip(items, errs)]
            errors += [e.kind for e in errs if e is not None]
        assert [i for i, _ in seen] == list(range(23))
        assert all(v == i for i, v in seen if v is not None) and len(errors) == 5
    finally:
        pipeline.close()


@pytest.mark.parametrize("reader", ["service", "stream"])
def test_the_service_and_a_stream_schedule_the_same_two_stages(tiny_model_dir, tmp_path, reader):
    """The micro-batcher and the pipeline run the embedder's prepare/embed: same vectors."""
    import asyncio

    from zstagger.service.batching import MicroBatcher

    paths = write_jpegs(tmp_path / "img", 5) + [str(tmp_path / "missing.jpg")]
    with Tagger(str(tiny_model_dir), device="cpu", precision="fp32", batch_size=2, settings=Settings(cache_dir="")) as tagger:
        expected = tagger.embed_images(paths)
        if reader == "stream":
            got = []
            for _, vectors, errors in tagger.embed_batches(paths):
                rows = iter(vectors if vectors is not None else [])
                got += [e if e is not None else next(rows) for e in errors]
        else:
            batcher = MicroBatcher(tagger.stages(), batch_size=4, max_wait=0.01, max_pending=64, lanes=1, loader_threads=2)
            try:
                rows, errors = asyncio.run(batcher.embed(paths))
            finally:
                batcher.close()
            got = [e if e is not None else r for r, e in zip(rows, errors)]
    assert [getattr(g, "kind", None) for g in got] == [None] * 5 + ["not_found"]
    np.testing.assert_allclose(np.stack(got[:5]), np.stack(expected[:5]), atol=1e-6)
