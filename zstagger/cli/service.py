"""The HTTP service from the command line: ``zstagger serve`` and ``zstagger api-key``."""

from __future__ import annotations

import os
import sys

import click

from ..errors import EXIT_USAGE, ZstaggerError, exit_code
from ..settings import Settings
from .common import cli


@cli.command()
@click.option("--host", help="Address to bind (ZSTAGGER_HOST, default 127.0.0.1: loopback only).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (ZSTAGGER_PORT, default 8000).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Server processes, each with its own copy of the model.")
@click.option("--model", help="Hub id or local checkpoint directory (ZSTAGGER_MODEL).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve(host, port, workers, model, log_level):
    """Serve the HTTP API: synchronous tagging, moderation, async jobs (with Redis), metrics.

    API docs at /docs once it runs. Requests need `Authorization: Bearer <key>` with a key
    whose hash is in ZSTAGGER_API_KEYS (see `zstagger api-key`).
    """
    if model is not None:
        os.environ["ZSTAGGER_MODEL"] = model  # the server processes read their settings themselves
    settings = Settings()
    try:
        from ..extras import check_installed
        from ..runtimes import check_available, required_modules

        check_installed("fastapi", "uvicorn", "multipart", *required_modules(settings.model))
        from ..service.auth import ApiKeys

        check_available(settings.model)  # a missing model: one line now, not a server that never gets ready
        keys = ApiKeys.from_settings(settings)
    except ZstaggerError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exit_code(exc))
    if not keys.configured and not keys.anonymous:
        click.echo("warning: no API keys configured: every API call will be answered 401 until you set "
                   "ZSTAGGER_API_KEYS or ZSTAGGER_API_KEYS_FILE (hashes from `zstagger api-key`), or "
                   "ZSTAGGER_API_ALLOW_ANONYMOUS=1", err=True)
    if workers > 1 or settings.api_metrics_port:
        from ..queue.metrics import prepare_metrics_dir

        prepare_metrics_dir()  # several processes, or a metrics port of its own: aggregate through files
    if settings.api_metrics_port:
        from ..service.metrics import serve_metrics_port

        try:
            serve_metrics_port(settings.api_metrics_port, settings.metrics_address)
        except OSError as exc:
            click.echo(f"Error: cannot serve metrics on {settings.metrics_address}:{settings.api_metrics_port} "
                       f"(ZSTAGGER_API_METRICS_PORT, ZSTAGGER_METRICS_ADDRESS): {exc.strerror or exc}", err=True)
            sys.exit(EXIT_USAGE)
    import uvicorn

    from ..service.connections import listen_backlog, raise_open_file_limit

    raise_open_file_limit()  # before the backlog and the connection cap are sized from it

    # The guarded protocol closes connections whose headers are too slow and caps open
    # connections (ZSTAGGER_HEADER_TIMEOUT, ZSTAGGER_MAX_CONNECTIONS): see zstagger.service.connections.
    uvicorn.run("zstagger.service.app:create_app", factory=True, host=host or settings.host,
                port=settings.port if port is None else port, workers=workers, log_level=log_level,
                proxy_headers=False, server_header=False, timeout_graceful_shutdown=30,
                http="zstagger.service.connections:GuardedHTTPProtocol", backlog=listen_backlog())


@cli.command("api-key")
@click.option("--hash", "key_to_hash", metavar="KEY", help="Print the hash of an existing key instead of making one.")
def api_key(key_to_hash):
    """Make a new API key: prints the key (give it to the client) and its hash (give it to the server).

    \b
    zstagger api-key                # key on the first line, sha256:... on the second
    ZSTAGGER_API_KEYS=sha256:... zstagger serve
    """
    from ..service.auth import hash_key, new_key

    if key_to_hash:
        click.echo(hash_key(key_to_hash))
        return
    key = new_key()
    click.echo(key)
    click.echo(hash_key(key))
