"""Compiled taxonomies kept for reuse: bounded by memory, compiled without holding others up.

A Tagger compiles each taxonomy once (its prompts' text embeddings and the scoring plan)
and keeps it. Ad-hoc label sets sent to the HTTP service are taxonomies too, and any client
can send a new one with every request, so what is kept is bounded by the memory it holds
(``ZSTAGGER_CLASSIFIER_CACHE_BYTES``, plus the one used last), the least recently used
going first. A compile runs outside the cache's lock: a two-label set is compiled and used
while a 1,500-label one is still being encoded, and requests that need the same set at
once wait for one compile instead of each running it.

Pure bookkeeping: no model, no I/O; :func:`memory_bytes` estimates what an entry holds.
Imports nothing from zstagger.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import numpy as np

V = TypeVar("V")

# Parsed Python objects of a taxonomy spec (labels, prompts, pydantic models) hold about this
# many times its JSON size (measured: 2,000 ad-hoc labels, 0.57 MB of JSON, 2.3 MB of objects).
_OBJECTS_PER_JSON_BYTE = 4


def memory_bytes(value: Any) -> int:
    """About how much memory ``value`` (a compiled taxonomy) holds: its numpy arrays, found
    through its attributes, lists and dicts, plus its taxonomy's parsed spec."""
    seen: set[int] = set()
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if id(item) in seen or item is None or isinstance(item, (str, bytes, int, float, bool)):
            continue
        seen.add(id(item))
        if isinstance(item, np.ndarray):
            total += item.nbytes
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            if item and isinstance(next(iter(item)), (str, int, float)):
                total += 64 * len(item)  # a list of plain values: about a small object each
            else:
                stack.extend(item)
        elif hasattr(item, "model_dump_json"):  # a pydantic model: the taxonomy spec
            total += _OBJECTS_PER_JSON_BYTE * len(item.model_dump_json())
        elif hasattr(item, "__dict__"):
            stack.extend(vars(item).values())
    return total


class _Compiling:
    """One compile in progress: those who want the same key wait for its result."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class CompiledCache(Generic[V]):
    """``get(key, build)``: the kept value, or ``build()``'s, compiled once however many ask at once.

    Values are kept while their :func:`memory_bytes` add up to at most ``max_bytes``, the
    least recently used dropped first; the newest is always kept, however large (a taxonomy
    larger than the bound is not compiled again for every batch it scores).
    """

    def __init__(self, max_bytes: int, size_of: Callable[[Any], int] = memory_bytes):
        self.max_bytes = max_bytes
        self.size_of = size_of
        self._kept: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._compiling: dict[Hashable, _Compiling] = {}
        self._lock = threading.Lock()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, key: Hashable, build: Callable[[], V]) -> V:
        with self._lock:
            entry = self._kept.get(key)
            if entry is not None:
                self._kept.move_to_end(key)
                return entry[0]
            compiling = self._compiling.get(key)
            mine = compiling is None
            if mine:
                compiling = self._compiling[key] = _Compiling()
        assert compiling is not None
        if not mine:  # someone else compiles this key now: wait for theirs
            compiling.done.wait()
            if compiling.error is not None:
                raise compiling.error
            return compiling.value
        try:
            compiling.value = build()
        except BaseException as exc:
            compiling.error = exc
            raise
        finally:
            with self._lock:
                del self._compiling[key]
                if compiling.error is None:
                    self._keep(key, compiling.value)
            compiling.done.set()
        return compiling.value

    def _keep(self, key: Hashable, value: V) -> None:
        size = self.size_of(value)
        self._kept[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes and len(self._kept) > 1:
            _, (_, dropped) = self._kept.popitem(last=False)
            self.bytes -= dropped

