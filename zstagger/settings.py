"""All of zstagger's configuration, read from ``ZSTAGGER_*`` environment variables.

Command-line options override these; these override the defaults below. ``zstagger
settings`` prints the values in effect. This module imports nothing from zstagger, so every
layer can read settings without pulling in another.

Secrets never leave through a dump or a repr: a secret setting is a ``SecretStr`` (pydantic
prints ``**********``), a URL that may carry credentials is a :data:`SecretUrl` (its
password is printed as ``****``, see :func:`redact_url`).
"""

from __future__ import annotations

import os
import tempfile
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, PlainSerializer, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


# Query parameters whose values are secrets (redis-py takes e.g. ?password=...).
_SECRET_QUERY_WORDS = ("pass", "secret", "token", "apikey", "api_key", "auth")
REDACTED = "****"


def redact_url(url: str) -> str:
    """``url`` with its password, and any password-like query value, replaced by ``****``.

    What every message, log line and ``zstagger settings`` shows of a URL.
    """
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
    except ValueError:  # not a URL we can take apart: show none of it
        return REDACTED
    netloc = parts.netloc
    if has_password:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}:{REDACTED}@{host}"
    query = "&".join(
        f"{item.split('=', 1)[0]}={REDACTED}"
        if "=" in item and any(word in item.split("=", 1)[0].lower() for word in _SECRET_QUERY_WORDS) else item
        for item in parts.query.split("&")
    ) if parts.query else ""
    if netloc == parts.netloc and query == parts.query:
        return url
    rebuilt = urlunsplit(parts._replace(netloc=netloc, query=query))
    if url.startswith(f"{parts.scheme}://") and not rebuilt.startswith(f"{parts.scheme}://"):  # unix:///path
        rebuilt = rebuilt.replace(f"{parts.scheme}:", f"{parts.scheme}://", 1)
    return rebuilt


#: A URL that may carry a password: the value is the real URL, its JSON form is redacted.
SecretUrl = Annotated[str, PlainSerializer(redact_url, return_type=str, when_used="json")]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ZSTAGGER_", extra="ignore")

    # engine
    model: str = Field(DEFAULT_MODEL, description="Hub id or local directory of a CLIP-family checkpoint.")
    device: str = Field("auto", description="auto, cpu, cuda or mps.")
    precision: str = Field("auto", description="auto, fp32, bf16 or fp16 (auto: bf16 on CPUs with native bf16, fp16 on GPUs).")
    batch_size: int = Field(32, ge=1, description="Images per forward pass.")
    loader_threads: int = Field(0, ge=0, description="Image decoding threads (0: one per CPU core, at most 4).")
    inference_lanes: int = Field(
        0, ge=0, le=64,
        description="Batches encoded at once on CPU, each on its own share of the cores (0: one per core, at most 8; GPUs use 1).",
    )
    exact_preprocessing: bool = Field(
        False,
        description="Reproduce the checkpoint's image processor bit for bit. Off: JPEGs decode at reduced scale "
        "(keeping twice the model's input size) and downscaling uses a vectorised kernel; about 2x faster.",
    )
    cache_dir: str = Field(
        default_factory=lambda: os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "zstagger"),
        description="Where text embeddings of taxonomies, model scalars and image embeddings are cached between runs "
        "('' disables every cache).",
    )
    image_cache: bool = Field(
        False,
        description="Cache image embeddings (SQLite file in the cache directory) when tagging, so an image already "
        "seen by this model is neither decoded nor encoded again. `zstagger eval` and `calibrate` always use it.",
    )
    store: SecretUrl = Field(
        "", repr=False,
        description="Embedding store: every tagged image's content hash, reference, job and embedding, for re-tagging "
        "without reading images and for skipping images already seen. sqlite:///relative/path, sqlite:////absolute/path "
        "(or a plain file path), or postgresql://user:password@host/db ('' = off).",
    )
    store_timeout: float = Field(
        20.0, gt=0,
        description="Seconds a write to an unreachable embedding store is retried before its images are counted as "
        "unrecorded and tagging goes on (reads never wait: a store that does not answer is a miss).",
    )
    classifier_cache_bytes: int = Field(
        128 * 1024 * 1024, ge=0,
        description="Memory for compiled taxonomies and label sets kept for reuse in one process (their text embeddings "
        "and scoring plans), in bytes; the least recently used go first, the last one used is always kept. Ad-hoc label "
        "sets sent to the HTTP service are kept here too, so this bounds the memory new label sets can take.",
    )
    # plugins and taxonomies
    taxonomy_path: str = Field("", description=f"Directories of taxonomy YAML/JSON files, separated by {os.pathsep!r}.")
    plugins_dir: str = Field("", description="Directory of one-off plugin .py files.")
    block_plugins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="Comma-separated plugin names not to load.")
    # image reading
    url_timeout: float = Field(
        10.0, gt=0, description="Seconds allowed to fetch one image URL: DNS, connect, headers and body, redirects included."
    )
    max_image_bytes: int = Field(
        50 * 1024 * 1024, gt=0, description="Largest encoded image read: a file, a download or bytes, in bytes."
    )
    max_image_pixels: int = Field(64_000_000, gt=0, description="Largest image (width x height) decoded; guards against decompression bombs.")
    max_jpeg_scans: int = Field(
        100, ge=1, description="Most scans a JPEG may have (progressive ones have about 10); guards against scan bombs."
    )
    max_decode_bytes: int = Field(
        1024 * 1024 * 1024, gt=0,
        description="Memory for images being decoded at once in one process, shared by its loader threads, in bytes; "
        "an image that needs more on its own is refused.",
    )
    allow_private_urls: bool = Field(False, description="Allow URLs that resolve to private, loopback or link-local addresses.")
    # queue
    redis_url: SecretUrl = Field(
        "redis://localhost:6379/0", repr=False, description="Broker and job store (redis:// or rediss://, password in the URL)."
    )
    queues: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["interactive", "bulk"], description="Queues a worker consumes, comma-separated, highest priority first."
    )
    concurrency: int = Field(1, ge=1, description="Worker processes per `zstagger worker` (each loads the model).")
    chunk_size: int = Field(32, ge=1, le=1024, description="Images per queued task (one forward pass each).")
    visibility_timeout: int = Field(
        600, ge=1, description="Seconds before an unacknowledged chunk (its worker died) is redelivered; must exceed the longest chunk."
    )
    result_ttl: int = Field(7 * 24 * 3600, ge=60, description="Seconds job results are kept in Redis.")
    max_retries: int = Field(3, ge=0, description="Retries of transient failures (URL timeouts, Redis blips) before they become error records.")
    max_upload_bytes: int = Field(10 * 1024 * 1024, gt=0, description="Largest image sent through the queue as bytes.")
    # HTTP service (`zstagger serve`)
    host: str = Field("127.0.0.1", description="Address `zstagger serve` binds (loopback unless you mean otherwise).")
    port: int = Field(8000, ge=0, le=65535, description="Port of `zstagger serve`.")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Accepted API keys, as comma-separated SHA-256 hashes (`zstagger api-key` prints one)."
    )
    api_keys_file: str = Field("", description="File of accepted API key hashes, one per line (# comments).")
    api_allow_anonymous: bool = Field(False, description="Serve API calls without a key (only on a trusted network).")
    max_request_bytes: int = Field(64 * 1024 * 1024, gt=0, description="Largest HTTP request body, in bytes.")
    max_request_images: int = Field(64, ge=1, description="Most images in one synchronous HTTP request.")
    max_job_images: int = Field(100_000, ge=1, description="Most images in one job submitted over HTTP.")
    max_request_labels: int = Field(
        1000, ge=1, description="Most ad-hoc labels in one HTTP request (`labels` of /v1/tag and /v1/jobs); beyond it: 413."
    )
    header_timeout: float = Field(
        10.0, gt=0,
        description="Seconds an HTTP client has to send a request's headers, from when it connects or its previous "
        "response was sent; slower connections are closed (slowloris).",
    )
    max_connections: int = Field(
        0, ge=0,
        description="Most open client connections of one `zstagger serve` process (0: what its open-file limit, "
        "ulimit -n, leaves room for, at most 8192; `zstagger serve` raises its soft limit to the hard one). Over it, "
        "a new connection closes the oldest one still waiting for its headers, or is refused if every connection "
        "has a request in progress.",
    )
    batch_wait_ms: float = Field(5.0, ge=0, description="Milliseconds an image waits for others to fill a model batch.")
    max_pending_images: int = Field(
        512, ge=1, description="Images in flight in the HTTP service (decoding, waiting, encoding); beyond it: 503."
    )
    api_metrics_port: int = Field(
        0, ge=0, le=65535,
        description="Port on which `zstagger serve` also serves /metrics without an API key, on ZSTAGGER_METRICS_ADDRESS, "
        "for a Prometheus scraper (0: off). /metrics on the API's own port always needs an API key.",
    )
    # job notifications
    webhook_secret: SecretStr | None = Field(
        None, description="Key that signs webhook events (HMAC-SHA256); set the same on producers and workers."
    )
    webhook_max_attempts: int = Field(8, ge=1, le=100, description="Delivery attempts of one webhook event before it is given up.")
    webhook_timeout: float = Field(10.0, gt=0, description="Seconds allowed for one webhook delivery attempt.")
    webhook_inline_bytes: int = Field(
        256 * 1024, ge=0, description="Results are put in the webhook event itself when their JSON is at most this size."
    )
    # operations
    metrics_port: int = Field(9808, ge=0, le=65535, description="Port of a worker's Prometheus /metrics endpoint (0: off).")
    metrics_address: str = Field(
        "127.0.0.1", description="Address the metrics endpoint listens on (0.0.0.0: every interface, for a scraper on another host)."
    )
    heartbeat_interval: float = Field(15.0, gt=0, description="Seconds between worker heartbeats; `zstagger health` allows 3 missed.")
    heartbeat_dir: str = Field(
        # Never a directory named plain "zstagger": run from $TMPDIR, it would shadow the package.
        default_factory=lambda: os.path.join(tempfile.gettempdir(), "zstagger-heartbeats"),
        description="Where workers touch a heartbeat file for `zstagger health --local` (liveness without Redis).",
    )

    @field_validator("block_plugins", "queues", "api_keys", mode="before")
    @classmethod
    def _split_commas(cls, value):
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @property
    def taxonomy_dirs(self) -> list[str]:
        return [p for p in self.taxonomy_path.split(os.pathsep) if p]
