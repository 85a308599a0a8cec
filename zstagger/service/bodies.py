"""Large request bodies are parsed in a helper process, so that no client waits behind them.

Parsing and validating a JSON body of tens of megabytes (pydantic over hundreds of
thousands of objects) and decoding large base64 images take seconds of native code that
holds the GIL: on the event loop they stall every client, ``/healthz`` included, and in a
thread they stall it just the same. A body larger than :data:`INLINE_BYTES` is therefore
handed, as bytes, to a small pool of helper processes (started with ``spawn``: no copy of
the model or of its threads), which parses, validates and decodes it and sends back what
the request needs (image references and bytes, the taxonomy). The helpers run at a lower
CPU priority than the server, so they never take its cores from it. Smaller bodies are
parsed in place: a process hop is not worth it.

An :class:`~.errors.ApiError` raised while parsing comes back as itself. The functions run
in a helper must be importable module-level functions (they are pickled by name).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from .errors import ApiError

log = logging.getLogger("zstagger.service")

T = TypeVar("T")
#: Bodies larger than this are parsed in a helper process.
INLINE_BYTES = 256 * 1024
HELPERS = 2
HELPER_NICENESS = 10


def _in_helper(call: Callable[..., T], args: tuple) -> tuple[str, Any]:
    """In the helper: ``call(*args)``, with an ApiError sent back as its parts (it does not pickle)."""
    try:
        return "ok", call(*args)
    except ApiError as exc:
        return "api_error", (exc.status_code, exc.type, exc.message, exc.headers)


def _ready() -> bool:
    return True


def _lower_priority() -> None:
    """Helpers yield the CPU to the server's event loop when both want it."""
    try:
        os.nice(HELPER_NICENESS)
    except OSError:
        pass


class BodyParser:
    """``await parser(size, call, *args)``: ``call(*args)`` in place for a body of at most
    :data:`INLINE_BYTES` bytes, in a helper process for a larger one."""

    def __init__(self, helpers: int = HELPERS, inline_bytes: int = INLINE_BYTES):
        self.helpers, self.inline_bytes = helpers, inline_bytes
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.helpers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_lower_priority)
        return self._pool

    def warm_up(self) -> None:
        """Start the helpers now (imports take a second), not on the first large body."""
        for _ in range(self.helpers):
            self._executor().submit(_ready)

    async def __call__(self, size: int, call: Callable[..., T], *args: Any) -> T:
        if size <= self.inline_bytes:
            return call(*args)
        loop = asyncio.get_running_loop()
        try:
            outcome, value = await loop.run_in_executor(self._executor(), _in_helper, call, args)
        except BrokenProcessPool:  # a helper died (killed, out of memory): a new pool for the next body
            log.error("zstagger: a request-body parser process stopped; starting new ones")
            self._pool = None
            raise ApiError(503, "unavailable", "the request body could not be parsed (a parser process stopped); "
                           "retry", headers={"Retry-After": "1"}) from None
        if outcome == "api_error":
            status, kind, message, headers = value
            raise ApiError(status, kind, message, headers)
        return value

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
