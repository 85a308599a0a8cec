"""The HTTP API: ``zstagger serve``.

- :mod:`.app`: the FastAPI application, its lifespan (model loading) and error handling;
- :mod:`.routes`: the endpoints (tagging, moderation, jobs, taxonomies, health, metrics);
- :mod:`.requests`: turning an HTTP body (JSON or multipart) into image references;
- :mod:`.batching`: micro-batching concurrent requests into model batches;
- :mod:`.auth`: API keys (small, security-sensitive); :mod:`.limits`: the body-size guard;
- :mod:`.moderation`: the OpenAI-moderation-compatible request and response shape.

The service sits above the queue (async jobs) and the tagger (synchronous tagging); nothing
below imports it.
"""

from .app import create_app

__all__ = ["create_app"]
