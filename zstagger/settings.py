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
from typing import Annotated, Literal
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


# Which processes read each setting: the "Read by" column of the configuration page
# (docs/configuration.md, generated from these fields by docs/gen/generate.py).
CLI = "CLI"  # commands that tag or read on this machine (tag, eval, retag, store, ...) and the Python API
WORKER = "worker"  # `zstagger worker` (or `celery -A zstagger.queue.celery_app worker`)
API_SERVER = "API server"  # `zstagger serve`
PRODUCER = "producer"  # enqueue, status, results, cancel, health, queue-stats, and Python's enqueue()


def read_by(*processes: str, default_text: str | None = None) -> dict[str, object]:
    """A field's documentation metadata: the processes that read it (and, for a default that
    depends on the machine, how the docs show it)."""
    return {"read_by": list(processes), **({"default_text": default_text} if default_text else {})}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ZSTAGGER_", extra="ignore")

    # engine
    model: str = Field(
        DEFAULT_MODEL, description="Hub id or local directory of a CLIP-family checkpoint.",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    device: str = Field(
        "auto", description="auto, cpu, cuda, cuda:N or mps.",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    precision: str = Field(
        "auto", description="auto, fp32, bf16 or fp16 (auto: bf16 on CPUs with native bf16, fp16 on GPUs).",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    batch_size: int = Field(
        32, ge=1, description="Images per forward pass.",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    loader_threads: int = Field(
        0, ge=0, description="Image decoding threads (0: one per CPU core, at most 4).",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    inference_lanes: int = Field(
        0, ge=0, le=64,
        description="Batches encoded at once on CPU, each on its own share of the cores (0: one per core, at most 8; GPUs use 1).",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    exact_preprocessing: bool = Field(
        False,
        description="Reproduce the checkpoint's image processor bit for bit. Off: JPEGs decode at reduced scale "
        "(keeping twice the model's input size) and downscaling uses a vectorised kernel; about 2x faster.",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    cache_dir: str = Field(
        default_factory=lambda: os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "zstagger"),
        description="Where text embeddings of taxonomies, model scalars and image embeddings are cached between runs "
        "('' disables every cache).",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER, default_text="$XDG_CACHE_HOME/zstagger (~/.cache/zstagger)"),
    )
    image_cache: bool = Field(
        False,
        description="Cache image embeddings (SQLite file in the cache directory) when tagging, so an image already "
        "seen by this model is neither decoded nor encoded again. `zstagger eval` and `calibrate` always use it.",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    store: SecretUrl = Field(
        "", repr=False,
        description="Embedding store: every tagged image's content hash, reference, job and embedding, for re-tagging "
        "without reading images and for skipping images already seen. sqlite:///relative/path, sqlite:////absolute/path "
        "(or a plain file path), or postgresql://user:password@host/db ('' = off).",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    store_timeout: float = Field(
        20.0, gt=0,
        description="Seconds a write to an unreachable embedding store is retried before its images are counted as "
        "unrecorded and tagging goes on (reads never wait: a store that does not answer is a miss).",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    # built runtimes (`zstagger runtime build / qualify`)
    allow_unqualified_runtime: bool = Field(
        False,
        description="Use an int8 runtime on a taxonomy it has not passed `zstagger runtime qualify` for (logged, and "
        "recorded as unqualified in every result's provenance).",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    qualify_min_verdict_agreement: float = Field(
        0.99, ge=0, le=1,
        description="`zstagger runtime qualify` passes when at least this share of images gets the same verdict (the same "
        "top label for a taxonomy without actions) from the runtime as from its source model.",
        json_schema_extra=read_by(CLI),
    )
    qualify_min_tag_agreement: float = Field(
        0.98, ge=0, le=1,
        description="... and, for every label, at least this share of images is tagged (or not) alike by both.",
        json_schema_extra=read_by(CLI),
    )
    explain: bool = Field(
        True,
        description="Give every result its decision trail (`explanation`: the prompt that matched, the rival, the "
        "threshold and where it came from); off leaves it out of the results.",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    retag_parallel_from: int = Field(
        40_000, ge=1,
        description="`zstagger retag` scores and writes in several processes (--workers) from this many selected "
        "images on; below it, in one. The output is the same byte for byte either way.",
        json_schema_extra=read_by(CLI),
    )
    classifier_cache_bytes: int = Field(
        128 * 1024 * 1024, ge=0,
        description="Memory for compiled taxonomies and label sets kept for reuse in one process (their text embeddings "
        "and scoring plans), in bytes; the least recently used go first, the last one used is always kept. Ad-hoc label "
        "sets sent to the HTTP service are kept here too, so this bounds the memory new label sets can take.",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    # plugins and taxonomies
    taxonomy_path: str = Field(
        "", description=f"Directories of taxonomy YAML/JSON files, separated by {os.pathsep!r} (workers get each job's "
        "taxonomy inside its tasks).",
        json_schema_extra=read_by(CLI, API_SERVER, PRODUCER),
    )
    plugins_dir: str = Field(
        "", description="Directory of one-off plugin .py files.",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER, PRODUCER),
    )
    block_plugins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated plugin names not to load.",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER, PRODUCER),
    )
    load_plugins: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="Installed plugins (entry points of the 'zstagger' group) to load, comma-separated, by entry-point "
        "name; unset: every installed one; empty: none (the test suite sets it so). Built-ins and ZSTAGGER_PLUGINS_DIR "
        "files are not affected.",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER, PRODUCER),
    )
    # image reading
    url_timeout: float = Field(
        10.0, gt=0, description="Seconds allowed to fetch one image URL: DNS, connect, headers and body, redirects included.",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER, PRODUCER),
    )
    max_image_bytes: int = Field(
        50 * 1024 * 1024, gt=0, description="Largest encoded image read: a file, a download or bytes, in bytes.",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    max_text_chars: int = Field(
        2000, ge=1, le=1_000_000,
        description="Longest text an input may bring (a product title / description, fused with its image); "
        "longer: an error record for that input.",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER, PRODUCER),
    )
    max_image_pixels: int = Field(
        64_000_000, gt=0, description="Largest image (width x height) decoded; guards against decompression bombs.",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    max_jpeg_scans: int = Field(
        100, ge=1, description="Most scans a JPEG may have (progressive ones have about 10); guards against scan bombs.",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    max_jpeg_scan_pixels: int = Field(
        1_000_000_000, gt=0,
        description="Most decoding work a JPEG may ask for, as scans x pixels (each scan is decoded over the whole image "
        "again): a 12-megapixel progressive photo (10 scans) needs 120 million; about a second of decoding at the "
        "default. Guards against scan bombs that stay under ZSTAGGER_MAX_JPEG_SCANS.",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    max_decode_bytes: int = Field(
        1024 * 1024 * 1024, gt=0,
        description="Memory for images being decoded at once in one process, shared by its loader threads, in bytes; "
        "an image that needs more on its own is refused.", json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    allow_private_urls: bool = Field(
        False, description="Allow URLs that resolve to private, loopback or link-local addresses: image URLs and webhook "
        "callbacks (workers deliver webhooks: a loopback callback needs it on them too).",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER, PRODUCER),
    )
    # image sources and result sinks (zstagger.sources, zstagger.sinks)
    source_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Object-store locations images may be read from, comma-separated URL prefixes (s3://bucket/, "
        "gs://bucket/photos/, az://container/); also for the schemes of plugin sources. Empty: any location the "
        "process's own credentials can read, for the CLI, the Python API and workers, and none for requests arriving "
        "over HTTP. Set on the API server and on workers alike.",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER, PRODUCER),
    )
    source_page_size: int = Field(
        256, ge=1, le=1000,
        description="Objects listed per page from an object-store prefix (s3://bucket/prefix/): what a listing holds "
        "in memory at once, and, for enqueue, the size of each chunk a listing is split into.",
        json_schema_extra=read_by(CLI, PRODUCER),
    )
    source_options: SecretStr = Field(
        SecretStr(""), repr=False,
        description="JSON object of options per object-store scheme, passed to its fsspec filesystem, e.g. "
        '{"s3": {"endpoint_url": "http://minio:9000"}}. Credentials belong in the process\'s own environment or '
        "the cloud's config files (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*), never in a request; "
        "this setting is shown redacted all the same, in case it holds one.",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    sink_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Where result sinks may write, comma-separated URL prefixes (s3://bucket/results/). Empty: anywhere "
        "the worker's own credentials can write, for jobs from the CLI and Python; no sink for jobs arriving over HTTP.",
        json_schema_extra=read_by(WORKER, API_SERVER, PRODUCER),
    )
    sink_max_attempts: int = Field(
        30, ge=1, le=1000, description="Deliveries of one chunk to a failing result sink (each of three quick attempts, "
        "then again later with backoff: 2, 4, 8 ... s, at most 60 s and a third of the visibility timeout, so 30 "
        "ride out some 25 minutes) before it is given up; its results stay in Redis.",
        json_schema_extra=read_by(WORKER),
    )
    # animations and video (zstagger.media)
    media_max_duration: float = Field(
        600.0, gt=0, description="Longest animation or video judged, in seconds: by its header, and by the frames actually "
        "decoded (a stream that runs past its declared length stops here); longer ones become too_long error records.",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    media_max_frames: int = Field(
        40_000, ge=1, description="Most frames decoded from one animation or video (every decoded frame counts, sampled or "
        "not); beyond it: a too_many_frames error record.",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    media_max_frame_pixels: int = Field(
        16_777_216, gt=0, description="Largest frame (width x height) of an animation (its logical screen) or video decoded.",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    media_max_total_pixels: int = Field(
        60_000_000_000, gt=0, description="Most pixels decoded from one animation or video, all frames together "
        "(about 8 minutes of 1080p at 30 frames/s); beyond it: a too_many_pixels error record.",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    media_timeout: float = Field(
        120.0, gt=0, description="Seconds allowed to decode one animation or video; beyond it: a media_timeout error record.",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    media_animation_frames: int = Field(
        64, ge=1, description="Frames of an animation judged: every frame up to this many, else this many sampled "
        "uniformly across its frames.",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    media_dedup_distance: float = Field(
        0.01, ge=0, le=1, description="Sampled frames this close to the last embedded one (mean absolute difference of "
        "32x32 colour thumbnails, 0-1) reuse its scores instead of being embedded again (0: embed every sampled frame).",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    media_batch_size: int = Field(
        4, ge=1, description="Frames embedded and scored at a time (and decoded ahead of them); early exit is checked "
        "after each such batch.",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    media_early_exit_animation: int = Field(
        1, ge=0, description="Stop decoding an animation once a block label has fired on this many sampled frames (0: never).",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    video_early_exit: int = Field(
        2, ge=0, description="Stop decoding a video once a block label has fired on this many sampled frames (0: never).",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    video_sample_rate: float = Field(
        1.0, gt=0, description="Frames per second sampled from a video (besides scene cuts and the first and last frame).",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    video_scene_threshold: float = Field(
        0.12, ge=0, le=1, description="A decoded frame whose 32x32 colour thumbnail differs from the previous frame's by "
        "more than this (mean absolute difference, 0-1) is a scene cut and is sampled too (0: no scene-cut sampling, "
        "which lets sparse sampling seek from keyframe to keyframe).",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    video_decode: Literal["reference", "all"] = Field(
        "reference", description="reference: decode only the video frames other frames refer to, skipping disposable "
        "B-frames (about half of a typical H.264 clip's frames and a third of its decoding time), so samples and scene "
        "cuts land on the nearest decoded frame; all: decode every frame. A stream whose reference frames are further "
        "apart than the sampling interval is decoded whole.",
        json_schema_extra=read_by(CLI, WORKER, API_SERVER),
    )
    video_split_seconds: float = Field(
        300.0, ge=0, description="A queued video (a local path or an upload) whose header declares more than this many "
        "seconds is cut into time ranges of about this length, judged by several workers side by side and joined into "
        "one result (0: never split; URLs are judged whole).",
        json_schema_extra=read_by(WORKER),
    )
    # queue
    redis_url: SecretUrl = Field(
        "redis://localhost:6379/0", repr=False, description="Broker and job store (redis:// or rediss://, password in the URL).",
        json_schema_extra=read_by(PRODUCER, WORKER, API_SERVER, CLI),
    )
    queues: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["interactive", "bulk"], description="Queues a worker consumes, comma-separated, highest priority first.",
        json_schema_extra=read_by(WORKER, PRODUCER),
    )
    concurrency: int = Field(
        1, ge=1, description="Worker processes per `zstagger worker` (each loads the model).",
        json_schema_extra=read_by(WORKER),
    )
    chunk_size: int = Field(
        32, ge=1, le=1024, description="Images per queued task (one forward pass each).",
        json_schema_extra=read_by(PRODUCER, API_SERVER),
    )
    visibility_timeout: int = Field(
        600, ge=1, description="Seconds before an unacknowledged chunk (its worker died) is redelivered; must exceed the longest chunk.",
        json_schema_extra=read_by(WORKER),
    )
    result_ttl: int = Field(
        7 * 24 * 3600, ge=60, description="Seconds job results are kept in Redis.",
        json_schema_extra=read_by(PRODUCER, API_SERVER, WORKER, CLI),
    )
    max_retries: int = Field(
        3, ge=0, description="Retries of transient failures (URL timeouts, Redis blips) before they become error records.",
        json_schema_extra=read_by(WORKER),
    )
    max_upload_bytes: int = Field(
        10 * 1024 * 1024, gt=0, description="Largest image sent through the queue as bytes.",
        json_schema_extra=read_by(PRODUCER, API_SERVER),
    )
    # HTTP service (`zstagger serve`)
    host: str = Field(
        "127.0.0.1", description="Address `zstagger serve` binds (loopback unless you mean otherwise).",
        json_schema_extra=read_by(API_SERVER),
    )
    port: int = Field(
        8000, ge=0, le=65535, description="Port of `zstagger serve`.",
        json_schema_extra=read_by(API_SERVER),
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Accepted API keys, as comma-separated SHA-256 hashes (`zstagger api-key` prints one).",
        json_schema_extra=read_by(API_SERVER),
    )
    api_keys_file: str = Field(
        "", description="File of accepted API key hashes, one per line (# comments).",
        json_schema_extra=read_by(API_SERVER),
    )
    api_allow_anonymous: bool = Field(
        False, description="Serve API calls without a key (only on a trusted network).",
        json_schema_extra=read_by(API_SERVER),
    )
    max_request_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="Largest HTTP request body, in bytes.",
        json_schema_extra=read_by(API_SERVER),
    )
    max_request_images: int = Field(
        64, ge=1, description="Most images in one synchronous HTTP request.",
        json_schema_extra=read_by(API_SERVER),
    )
    max_job_images: int = Field(
        100_000, ge=1, description="Most images in one job submitted over HTTP.",
        json_schema_extra=read_by(API_SERVER),
    )
    batch_wait_ms: float = Field(
        5.0, ge=0, description="Milliseconds an image waits for others to fill a model batch.",
        json_schema_extra=read_by(API_SERVER),
    )
    max_request_labels: int = Field(
        1000, ge=1, description="Most ad-hoc labels in one HTTP request (`labels` of /v1/tag and /v1/jobs); beyond it: 413.",
        json_schema_extra=read_by(API_SERVER),
    )
    header_timeout: float = Field(
        10.0, gt=0,
        description="Seconds an HTTP client has to send a request's headers, from when it connects or its previous "
        "response was sent; slower connections are closed (slowloris).",
        json_schema_extra=read_by(API_SERVER),
    )
    max_connections: int = Field(
        0, ge=0,
        description="Most open client connections of one `zstagger serve` process (0: what its open-file limit, "
        "ulimit -n, leaves room for, at most 8192; `zstagger serve` raises its soft limit to the hard one). Over it, "
        "a new connection closes the oldest one still waiting for its headers, or is refused if every connection "
        "has a request in progress.",
        json_schema_extra=read_by(API_SERVER),
    )
    max_pending_images: int = Field(
        512, ge=1, description="Images in flight in the HTTP service (decoding, waiting, encoding); beyond it: 503.",
        json_schema_extra=read_by(API_SERVER),
    )
    api_metrics_port: int = Field(
        0, ge=0, le=65535,
        description="Port on which `zstagger serve` also serves /metrics without an API key, on ZSTAGGER_METRICS_ADDRESS, "
        "for a Prometheus scraper (0: off). /metrics on the API's own port always needs an API key.",
        json_schema_extra=read_by(API_SERVER),
    )
    # job notifications
    webhook_secret: SecretStr | None = Field(
        None, description="Key that signs webhook events (HMAC-SHA256); set the same on the API server, producers and workers.",
        json_schema_extra=read_by(WORKER, API_SERVER, PRODUCER),
    )
    webhook_max_attempts: int = Field(
        8, ge=1, le=100, description="Delivery attempts of one webhook event before it is given up.",
        json_schema_extra=read_by(WORKER),
    )
    webhook_timeout: float = Field(
        10.0, gt=0, description="Seconds allowed for one webhook delivery attempt.",
        json_schema_extra=read_by(WORKER),
    )
    webhook_inline_bytes: int = Field(
        256 * 1024, ge=0, description="Results are put in the webhook event itself when their JSON is at most this size.",
        json_schema_extra=read_by(WORKER),
    )
    # operations
    metrics_port: int = Field(
        9808, ge=0, le=65535, description="Port of a worker's Prometheus /metrics endpoint (0: off).",
        json_schema_extra=read_by(WORKER),
    )
    metrics_address: str = Field(
        "127.0.0.1", description="Address the metrics endpoint listens on (0.0.0.0: every interface, for a scraper on another host).",
        json_schema_extra=read_by(WORKER),
    )
    heartbeat_interval: float = Field(
        15.0, gt=0, description="Seconds between worker heartbeats; `zstagger health` allows 3 missed.",
        json_schema_extra=read_by(WORKER, PRODUCER),
    )
    heartbeat_dir: str = Field(
        # Never a directory named plain "zstagger": run from $TMPDIR, it would shadow the package.
        default_factory=lambda: os.path.join(tempfile.gettempdir(), "zstagger-heartbeats"),
        description="Where workers touch a heartbeat file for `zstagger health --local` (liveness without Redis).",
        json_schema_extra=read_by(WORKER, PRODUCER, default_text="$TMPDIR/zstagger-heartbeats"),
    )

    @field_validator("block_plugins", "load_plugins", "queues", "api_keys", "source_allow", "sink_allow", mode="before")
    @classmethod
    def _split_commas(cls, value):
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @property
    def taxonomy_dirs(self) -> list[str]:
        return [p for p in self.taxonomy_path.split(os.pathsep) if p]
