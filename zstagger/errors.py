"""Errors a user can meet. Each says what happened and what to do about it."""

from __future__ import annotations


class ZstaggerError(Exception):
    """Base class for every error zstagger raises on purpose."""


class ConfigurationError(ZstaggerError, ValueError):
    """A setting or option has a value zstagger cannot use."""


class ModelNotFoundError(ZstaggerError):
    """The model could not be found locally, in the Hugging Face cache, or on the Hub."""


class ModelLoadError(ZstaggerError):
    """The model was found but is not a checkpoint zstagger can score with."""


class TaxonomyError(ZstaggerError, ValueError):
    """A taxonomy spec is invalid, or two plugins registered the same name."""


class UnknownTaxonomyError(ZstaggerError, KeyError):
    """No registered taxonomy has the requested name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PluginError(ZstaggerError):
    """A plugin could not be loaded or implements a hook wrongly."""


class FileReadError(ZstaggerError):
    """A local file could not be read safely: missing, not a regular file, too large, unreadable.

    ``kind`` is "not_found", "not_a_file", "too_large" or "unreadable". Callers say what the
    file was for (an image becomes an error record, a taxonomy file a TaxonomyError).
    """

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


class UrlBlockedError(ZstaggerError):
    """A URL resolves to an address that untrusted URLs may not reach (private, loopback,
    link-local, or an IPv6 form that leads to one). Set ZSTAGGER_ALLOW_PRIVATE_URLS=1 on a
    trusted network."""


class FetchError(ZstaggerError):
    """An outbound HTTP request failed (:mod:`zstagger.net`): refused by the address policy,
    timed out, too large, or answered with an error.

    ``kind`` is "invalid_url", "url_blocked", "fetch_failed", "fetch_timeout" or "too_large";
    ``transient`` marks failures worth retrying (timeouts, 5xx, unreachable hosts). Image
    reading turns it into an :class:`ImageLoadError` of the same kind.
    """

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

    def __init__(self, kind: str, message: str, *, transient: bool = False):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.transient = transient


class DatasetError(ZstaggerError, ValueError):
    """A labelled dataset (folders or manifest) cannot be used as given."""


class StoreError(ZstaggerError):
    """The embedding store (ZSTAGGER_STORE) cannot be used as asked: no schema, a newer schema,
    embeddings of another model. The message says what to do."""


class StoreUnavailableError(StoreError):
    """The embedding store cannot be reached (server down, file locked or unwritable)."""


class MissingExtraError(ZstaggerError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class ExamplesError(ZstaggerError, ValueError):
    """A taxonomy's example, counter-example or known images cannot be used here: an image
    cannot be read, a directory has none, or the spec carries no vectors for this model and
    its files are not readable."""
