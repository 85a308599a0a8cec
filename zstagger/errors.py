"""Errors a user can meet, and the one table of how each is reported.

Each error says what happened and what to do about it, and each class has a stable
``type``. :data:`ERRORS` maps every type to how it is reported: the exit code of a
``zstagger`` command, the HTTP status and body type of the HTTP API, and the ``type`` of
an image's error record when the error becomes one (:func:`exit_code`, :func:`http_answer`,
:func:`record_type` read it; the CLI and the service read nothing else). A test fails when
an error raised anywhere in zstagger has no row here.

The queue's errors live here too (jobs, chunks, webhook signatures), so a producer-only
install reports them without importing the queue.
"""

from __future__ import annotations

from typing import NamedTuple


class ZstaggerError(Exception):
    """Base class for every error zstagger raises on purpose."""

    type = "error"


class ConfigurationError(ZstaggerError, ValueError):
    """A setting or option has a value zstagger cannot use."""

    type = "invalid_configuration"


class ModelNotFoundError(ZstaggerError):
    """The model could not be found locally, in the Hugging Face cache, or on the Hub."""

    type = "model_not_found"


class ModelLoadError(ZstaggerError):
    """The model was found but is not a checkpoint zstagger can score with."""

    type = "model_load_failed"


class TaxonomyError(ZstaggerError, ValueError):
    """A taxonomy spec is invalid, or two plugins registered the same name."""

    type = "invalid_taxonomy"


class UnknownTaxonomyError(ZstaggerError, KeyError):
    """No registered taxonomy has the requested name."""

    type = "unknown_taxonomy"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PluginError(ZstaggerError):
    """A plugin could not be loaded or implements a hook wrongly."""

    type = "plugin_error"


class FileReadError(ZstaggerError):
    """A local file could not be read safely: missing, not a regular file, too large, unreadable.

    ``kind`` is "not_found", "not_a_file", "too_large" or "unreadable". Callers say what the
    file was for (an image becomes an error record, a taxonomy file a TaxonomyError).
    """

    type = "file_unreadable"

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


class UrlBlockedError(ZstaggerError):
    """A URL resolves to an address that untrusted URLs may not reach (private, loopback,
    link-local, or an IPv6 form that leads to one). Set ZSTAGGER_ALLOW_PRIVATE_URLS=1 on a
    trusted network."""

    type = "url_blocked"


class FetchError(ZstaggerError):
    """An outbound HTTP request failed (:mod:`zstagger.net`): refused by the address policy,
    timed out, too large, or answered with an error.

    ``kind`` is "invalid_url", "url_blocked", "fetch_failed", "fetch_timeout" or "too_large";
    ``transient`` marks failures worth retrying (timeouts, 5xx, unreachable hosts). Image
    reading turns it into an :class:`ImageLoadError` of the same kind.
    """

    type = "fetch_failed"

    def __init__(self, kind: str, message: str, *, transient: bool = False):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.transient = transient


class ImageLoadError(ZstaggerError):
    """One image could not be read. It becomes an error record; the batch goes on.

    ``kind`` is a short stable code ("not_found", "invalid_image", ...) reported as the
    error ``type``. ``transient`` marks failures worth retrying (network timeouts).
    """

    type = "image_unreadable"

    def __init__(self, kind: str, message: str, *, transient: bool = False):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.transient = transient


class InputTextError(ImageLoadError):
    """The text an input brought (a product title) cannot be used: longer than
    ``ZSTAGGER_MAX_TEXT_CHARS``, or not text. It becomes that input's error record
    (kind ``text_too_long`` or ``invalid_text``); the batch goes on."""

    type = "invalid_text"


class SourceRefusedError(ZstaggerError, ValueError):
    """A source URL that may not be read: credentials in it, a location outside the allow-list
    (ZSTAGGER_SOURCE_ALLOW), a scheme no source serves, or a sink outside ZSTAGGER_SINK_ALLOW."""

    type = "source_refused"


class SinkError(ZstaggerError):
    """A result sink could not take a chunk's results (the chunk is retried, its results kept in Redis)."""

    type = "sink_failed"


class DatasetError(ZstaggerError, ValueError):
    """A labelled dataset (folders or manifest) cannot be used as given."""

    type = "invalid_dataset"


class StoreError(ZstaggerError):
    """The embedding store (ZSTAGGER_STORE) cannot be used as asked: no schema, a newer schema,
    embeddings of another model. The message says what to do."""

    type = "store_error"


class StoreUnavailableError(StoreError):
    """The embedding store cannot be reached (server down, file locked or unwritable)."""

    type = "store_unavailable"


class MissingExtraError(ZstaggerError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    type = "missing_extra"


class ExamplesError(ZstaggerError, ValueError):
    """A taxonomy's example, counter-example or known images cannot be used here: an image
    cannot be read, a directory has none, or the spec carries no vectors for this model and
    its files are not readable."""

    type = "examples_unavailable"


# -- the queue's errors ----------------------------------------------------------------------


class UnknownJobError(ZstaggerError, KeyError):
    """No job has this id (expired, or never enqueued)."""

    type = "unknown_job"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class InvalidJobIdError(UnknownJobError, ValueError):
    """Not a job id at all (so certainly not a known job)."""

    type = "invalid_job_id"


class QueueUnavailableError(ZstaggerError):
    """Redis cannot be reached."""

    type = "queue_unavailable"


class RedisRefusedWritesError(QueueUnavailableError):
    """Redis answers but refuses writes: out of memory (``maxmemory`` with ``noeviction``) or a read-only replica."""

    type = "queue_refuses_writes"


class JobTimeout(ZstaggerError, TimeoutError):
    """``results(wait=True, timeout=...)`` ran out of time before the job finished."""

    type = "job_timeout"


class MalformedChunkError(ZstaggerError, ValueError):
    """A task message whose arguments are not what the producer sends; the worker refuses it."""

    type = "malformed_chunk"


class InvalidSignatureError(ZstaggerError):
    """A webhook request whose signature, timestamp or headers do not check out: reject it."""

    type = "invalid_signature"


# -- the table -------------------------------------------------------------------------------

EXIT_USAGE = 2  # usage or configuration errors, and every error a command cannot go on after
EXIT_TIMEOUT = 3  # not finished (a wait timed out)


class Reporting(NamedTuple):
    """How one type of error is reported."""

    exit_code: int  # a ``zstagger`` command exits with it
    http_status: int  # the HTTP API answers with it ...
    http_type: str  # ... and this "type" in its {"error": {"type", "message"}} body
    record_type: str = ""  # an image's error record says this when the error becomes one ("": the error's kind)


_REQUEST = Reporting(EXIT_USAGE, 400, "invalid_request")  # what the HTTP API says of an error in a request

#: Every error type zstagger raises -> how it is reported. HTTP answers and exit codes are
#: those clients and scripts have relied on: every error in a request is 400
#: ``invalid_request`` except the three a client acts on (unknown taxonomy, unknown job, queue away).
ERRORS: dict[str, Reporting] = {
    "error": _REQUEST._replace(record_type="error"),
    "invalid_configuration": _REQUEST._replace(record_type="invalid_configuration"),
    "model_not_found": _REQUEST._replace(record_type="model_unavailable"),
    "model_load_failed": _REQUEST._replace(record_type="model_unavailable"),
    "invalid_taxonomy": _REQUEST._replace(record_type="invalid_taxonomy"),
    "duplicate_taxonomy": _REQUEST._replace(record_type="invalid_taxonomy"),
    "broken_taxonomy": _REQUEST._replace(record_type="invalid_taxonomy"),  # a taxonomy file on the path that cannot be used
    "unknown_taxonomy": Reporting(EXIT_USAGE, 404, "unknown_taxonomy", "unknown_taxonomy"),
    "plugin_error": _REQUEST._replace(record_type="plugin_error"),
    "file_unreadable": _REQUEST,  # records: its kind (not_found, not_a_file, too_large, unreadable)
    "url_blocked": _REQUEST._replace(record_type="url_blocked"),
    "fetch_failed": _REQUEST,  # records: its kind (fetch_failed, fetch_timeout, url_blocked, too_large, invalid_url)
    "image_unreadable": _REQUEST,  # records: its kind (not_found, invalid_image, too_many_pixels, ...)
    "invalid_text": _REQUEST,  # records: its kind (text_too_long, invalid_text)
    "source_refused": _REQUEST._replace(record_type="source_refused"),
    "sink_failed": _REQUEST._replace(record_type="sink_failed"),
    "invalid_dataset": _REQUEST._replace(record_type="invalid_dataset"),
    "store_error": _REQUEST._replace(record_type="store_error"),
    "store_unavailable": _REQUEST._replace(record_type="store_unavailable"),
    "missing_extra": _REQUEST._replace(record_type="missing_extra"),
    "examples_unavailable": _REQUEST._replace(record_type="examples_unavailable"),
    "unknown_job": Reporting(EXIT_USAGE, 404, "unknown_job", "unknown_job"),
    "invalid_job_id": Reporting(EXIT_USAGE, 404, "unknown_job", "unknown_job"),
    "queue_unavailable": Reporting(EXIT_USAGE, 503, "queue_unavailable", "queue_unavailable"),
    "queue_refuses_writes": Reporting(EXIT_USAGE, 503, "queue_unavailable", "queue_unavailable"),
    "job_timeout": Reporting(EXIT_TIMEOUT, 504, "job_timeout", "job_timeout"),
    "malformed_chunk": _REQUEST._replace(record_type="malformed_chunk"),
    "invalid_signature": Reporting(EXIT_USAGE, 401, "invalid_signature", "invalid_signature"),
    "bench_failed": _REQUEST._replace(record_type="bench_failed"),
    "review_refused": _REQUEST._replace(record_type="review_refused"),  # the review API answers each kind itself
}


def reporting(error: BaseException | type[BaseException]) -> Reporting:
    """The row of ``error``'s type (an instance or a class; the nearest class with a row)."""
    cls = error if isinstance(error, type) else type(error)
    for klass in cls.__mro__:
        row = ERRORS.get(klass.__dict__.get("type", ""))  # type: ignore[arg-type]
        if row is not None:
            return row
    return ERRORS["error"]


def exit_code(error: BaseException | type[BaseException]) -> int:
    """What a ``zstagger`` command exits with when it stops on ``error``."""
    return reporting(error).exit_code


def http_answer(error: BaseException | type[BaseException]) -> tuple[int, str]:
    """(status, body type) the HTTP API answers ``error`` with."""
    row = reporting(error)
    return row.http_status, row.http_type


def record_type(error: BaseException | type[BaseException]) -> str:
    """The ``type`` of an image's error record made from ``error``: its own kind where it has one."""
    kind = getattr(error, "kind", None) if not isinstance(error, type) else None
    return kind or reporting(error).record_type or reporting(ZstaggerError).record_type
