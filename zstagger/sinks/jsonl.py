"""The built-in JSON Lines sink: one file per chunk under the ``--sink`` URL, at any fsspec location.

``--sink s3://bucket/results/`` writes ``s3://bucket/results/<job id>/<first>-<last>.jsonl``
per chunk, in one PUT (an object store replaces an object whole, so a chunk written again
replaces its file with the same lines: idempotent). A local directory (a path or
``file://``) gets the same layout, each file written to a temporary name and renamed.
Credentials are the worker's own (:mod:`zstagger.sources.objectstore`), as for reading.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

from ..hookspecs import hookimpl
from ..settings import Settings
from ..sources.access import scheme_of
from ..sources.objectstore import filesystem

_PROTOCOLS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "abfs", "abfs": "abfs", "abfss": "abfs"}


def chunk_url(url: str, job_id: str, chunk: str) -> str:
    return f"{url.rstrip('/')}/{job_id}/{chunk}.jsonl"


class JsonLinesSink:
    schemes = ("file", *_PROTOCOLS)

    def write(self, url: str, job_id: str, chunk: str, lines: Sequence[str]) -> None:
        data = "".join(line + "\n" for line in lines).encode()
        target = chunk_url(url, job_id, chunk)
        scheme = scheme_of(url)
        if scheme in ("", "file"):
            _write_local(target[len("file://"):] if scheme == "file" else target, data)
            return
        from fsspec.asyn import sync

        timeout = Settings().url_timeout
        fs = filesystem(_PROTOCOLS[scheme], timeout)
        sync(fs.loop, fs._pipe_file, target, data, timeout=max(timeout, 30.0))


def _write_local(path: str, data: bytes) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".chunk-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


@hookimpl
def register_result_sinks(register) -> None:
    register(JsonLinesSink())
