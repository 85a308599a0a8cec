"""Compiled taxonomies and label sets: kept within a memory bound, compiled without holding up
other taxonomies, one compile for concurrent requests of the same set. The Tagger tests use
the real tiny model."""

import threading
import time

import pytest

from zstagger import Tagger
from zstagger.compiled_cache import CompiledCache, memory_bytes
from zstagger.registry import resolve_taxonomy
from zstagger.settings import Settings


def test_the_cache_keeps_what_fits_the_bound_least_recently_used_out():
    cache = CompiledCache(max_bytes=3000, size_of=len)
    for key in "abc":
        cache.get(key, lambda key=key: key * 1000)
    assert cache.bytes == 3000 and len(cache) == 3
    cache.get("a", lambda: pytest.fail("a is kept: not built again"))  # a is now the most recent
    cache.get("d", lambda: "d" * 1000)
    assert cache.bytes == 3000 and len(cache) == 3
    built = []
    cache.get("b", lambda: built.append("b") or "b" * 1000)  # b was the least recently used: dropped
    assert built == ["b"]
    huge = cache.get("e", lambda: "e" * 10_000)  # over the bound alone: kept (the newest), the rest dropped
    assert huge == "e" * 10_000 and len(cache) == 1 and cache.bytes == 10_000


def test_compiles_of_different_keys_run_side_by_side_and_the_same_key_once():
    cache = CompiledCache(max_bytes=10**9, size_of=lambda v: 1)
    release = threading.Event()
    builds = []

    def slow():
        builds.append("big")
        assert release.wait(10)
        return "big"

    waiting = [threading.Thread(target=lambda: cache.get("big", slow)) for _ in range(3)]
    for t in waiting:
        t.start()
    time.sleep(0.2)
    started = time.monotonic()
    assert cache.get("small", lambda: "small") == "small"  # not held up by the big one
    assert time.monotonic() - started < 0.5 and all(t.is_alive() for t in waiting)
    release.set()
    for t in waiting:
        t.join(10)
    assert builds == ["big"]  # three asked at once, one compile


def test_a_failed_compile_is_not_kept_and_is_raised_to_every_waiter():
    cache = CompiledCache(max_bytes=100, size_of=lambda v: 1)
    with pytest.raises(ValueError, match="boom"):
        cache.get("k", lambda: (_ for _ in ()).throw(ValueError("boom")))
    assert cache.get("k", lambda: "fine") == "fine"


def test_memory_bytes_counts_a_compiled_label_set(tiny_model_dir):
    tagger = Tagger(str(tiny_model_dir), device="cpu", precision="fp32", settings=Settings(cache_dir=""))
    small = memory_bytes(tagger.classifier(resolve_taxonomy(None, ["cat", "dog"], None)))
    big = memory_bytes(tagger.classifier(resolve_taxonomy(None, [f"thing {i}" for i in range(2000)], None)))
    embeddings = 2000 * tagger.encoder.encode_text(["x"]).shape[1] * 4
    assert small < big and big > 2 * embeddings  # the embeddings and the parsed spec (several times its JSON)
    tagger.close()


@pytest.fixture
def counting_tagger(tiny_model_dir):
    """A Tagger on the tiny model whose text encoder counts the prompts it encodes."""
    tagger = Tagger(str(tiny_model_dir), device="cpu", precision="fp32",
                    settings=Settings(cache_dir="", classifier_cache_bytes=3_000_000))
    encoder = tagger.encoder
    real = encoder.encode_text
    encoded = []

    def encode_text(prompts, *args, **kwargs):
        encoded.append(len(prompts))
        return real(prompts, *args, **kwargs)

    encoder.encode_text = encode_text
    yield tagger, encoded
    tagger.close()


def test_a_small_label_set_is_not_held_up_while_a_big_one_is_encoded(counting_tagger):
    """A 2-label set is compiled and scores while an 8,000-label set is still being encoded."""
    tagger, encoded = counting_tagger
    big = resolve_taxonomy(None, [f"big label {i}" for i in range(8000)], None)
    compiling = threading.Thread(target=tagger.classifier, args=(big,))
    compiling.start()
    time.sleep(0.3)
    started = time.monotonic()
    small = tagger.classifier(resolve_taxonomy(None, ["cat", "dog"], None))
    small_seconds = time.monotonic() - started
    still_compiling = compiling.is_alive()
    compiling.join(120)
    assert still_compiling, "the small label set waited for the big one"
    assert small.names == ["cat", "dog"] and small_seconds < 1.0, small_seconds


def test_concurrent_requests_for_one_label_set_encode_it_once_and_the_bound_holds(counting_tagger):
    tagger, encoded = counting_tagger
    spec = resolve_taxonomy(None, [f"shared {i}" for i in range(1000)], None)
    got = []
    threads = [threading.Thread(target=lambda: got.append(tagger.classifier(spec))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(got) == 4 and all(g is got[0] for g in got)
    assert sum(encoded) == 1000  # one compile for four requests
    # Distinct sets beyond the 3 MB bound: the oldest are dropped, and compiled again if asked for.
    sets = [resolve_taxonomy(None, [f"set {n} label {i}" for i in range(1000)], None) for n in range(6)]
    for s in sets:
        tagger.classifier(s)
    assert tagger._compiled.bytes <= 3_000_000 + memory_bytes(tagger.classifier(sets[-1]))
    before = sum(encoded)
    tagger.classifier(sets[-1])
    assert sum(encoded) == before  # the newest is kept
    tagger.classifier(sets[0])
    assert sum(encoded) == before + 1000  # the oldest was dropped: compiled again
