"""What a result sink is: ``schemes`` it serves and ``write(url, job_id, chunk, lines)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class ResultSink(Protocol):
    """Where finished results go (see the plugin guide).

    ``write(url, job_id, chunk, lines)``: ``url`` is the job's ``--sink``, ``chunk`` a name
    stable across deliveries of the same chunk (:func:`chunk_name`), ``lines`` the chunk's
    result JSON lines, each with ``index`` and ``job_id``. Called again with the same
    arguments when a chunk is delivered again: overwrite, never append. Raise on failure
    (it is retried, then recorded on the job).
    """

    schemes: tuple[str, ...]

    def write(self, url: str, job_id: str, chunk: str, lines: Sequence[str]) -> None: ...


def chunk_name(indices: Sequence[int]) -> str:
    """The stable name of the chunk holding these inputs: its first and last index."""
    return f"{min(indices):08d}-{max(indices):08d}"


def with_ids(job_id: str, index: int, line: str) -> str:
    """A stored result line with its stable ids in front: ``{"job_id": ..., "index": ..., <result>}``."""
    body = line.strip()
    rest = body[1:] if body.startswith("{") else "}"
    separator = "" if rest.lstrip().startswith("}") else ","
    return f'{{"job_id":"{job_id}","index":{index}{separator}{rest}'
