"""Result sinks: where a job's finished results go besides Redis, registered like plugins.

- :mod:`.base`: what a sink is (:class:`ResultSink`: ``schemes`` and ``write``);
- :mod:`.registry`: scheme -> sink from every plugin's ``register_result_sinks``, and the
  check a ``--sink`` URL passes before a job is made (:func:`check_sink`);
- :mod:`.deliver`: one chunk's lines to its sink, retried a few times (:func:`deliver_chunk`);
- :mod:`.jsonl` (JSON Lines files at any fsspec URL: ``s3://``, ``gs://``, ``az://``,
  ``file://``) and :mod:`.webhook` (signed POSTs of each chunk): the built-ins.

Every chunk's file or event has a name made from the job and the chunk's first and last
input, and each line carries its input's ``index``: a chunk delivered again (a worker died
after storing it) is written again under the same name with the same lines, so what a sink
holds is at least once and de-duplicates on those ids. Imports nothing above the tagger: no
queue, no service.
"""

from .base import ResultSink, chunk_name
from .deliver import deliver_chunk
from .registry import check_sink, registered_sinks, sink_for

__all__ = ["ResultSink", "check_sink", "chunk_name", "deliver_chunk", "registered_sinks", "sink_for"]
