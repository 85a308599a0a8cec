"""Every outbound request: the hardened HTTP client, the address policy, deadlines.

- :mod:`.fetch`: GET and POST with one deadline over the whole exchange, a size cap, and
  every hop pinned to an address checked first (:func:`http_get`, :func:`http_post`);
- :mod:`.addresses`: which addresses an untrusted URL may reach (SSRF protection);
- :mod:`.deadline`: a watchdog that shuts a socket down at its deadline;
- :mod:`.policy`: the limits of one exchange (:class:`FetchPolicy`).

Failures are :class:`~zstagger.errors.FetchError` with a stable ``kind`` (``invalid_url``,
``url_blocked``, ``fetch_failed``, ``fetch_timeout``, ``too_large``) and ``transient`` set
where a retry may help. Image reading (:mod:`zstagger.images`) turns them into error
records; webhook delivery uses them as they are. Imports nothing above errors and settings.
"""

from ..errors import FetchError, UrlBlockedError
from .addresses import check_address, resolve_allowed
from .fetch import http_get, http_post
from .policy import FetchPolicy

__all__ = ["FetchError", "FetchPolicy", "UrlBlockedError", "check_address", "http_get", "http_post", "resolve_allowed"]
