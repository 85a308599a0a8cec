"""The hardened URL fetcher: a deadline, a size cap and SSRF protection for every download.

Security-sensitive: keep it small enough to review alone. Every hop of a redirect chain is
resolved once, checked against the address policy, and connected to by that address.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from urllib.parse import urljoin, urlsplit

from ..errors import ImageLoadError
from .policy import ImagePolicy

_MAX_REDIRECTS = 5
_USER_AGENT = "zstagger (+https://pypi.org/project/zstagger/)"

def fetch_url(url: str, policy: ImagePolicy = ImagePolicy()) -> bytes:
    """Download an image with a deadline, a size cap and SSRF protection.

    Each hop of a redirect chain is resolved once and checked; the connection is made to
    that checked address (no second DNS lookup an attacker could answer differently).
    """
    deadline = time.monotonic() + policy.url_timeout
    for _ in range(_MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ImageLoadError("invalid_url", f"not an http(s) URL: {url}")
        port = parts.port or (443 if scheme == "https" else 80)
        address = _resolve_allowed(parts.hostname, port, policy)
        conn = _PinnedConnection.make(scheme, parts.hostname, port, address, _remaining(deadline, url))
        try:
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", path, headers={"User-Agent": _USER_AGENT, "Accept": "image/*,*/*;q=0.5"})
            resp = conn.getresponse()
            if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                url = urljoin(url, resp.getheader("Location"))
                continue
            if resp.status != 200:
                transient = resp.status in (408, 425, 429) or resp.status >= 500
                raise ImageLoadError("fetch_failed", f"HTTP {resp.status} {resp.reason} from {url}", transient=transient)
            return _read_capped(conn, resp, url, policy, deadline)
        except socket.timeout:
            raise ImageLoadError("fetch_timeout", f"timed out after {policy.url_timeout:g}s fetching {url}", transient=True) from None
        except ssl.SSLError as exc:
            raise ImageLoadError("fetch_failed", f"TLS error fetching {url}: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise ImageLoadError("fetch_failed", f"could not fetch {url}: {exc}", transient=True) from None
        finally:
            conn.close()
    raise ImageLoadError("fetch_failed", f"more than {_MAX_REDIRECTS} redirects fetching {url}")


def _remaining(deadline: float, url: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ImageLoadError("fetch_timeout", f"timed out fetching {url}", transient=True)
    return left


def _read_capped(
    conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, url: str, policy: ImagePolicy, deadline: float
) -> bytes:
    length = resp.getheader("Content-Length")
    if length and length.isdigit() and int(length) > policy.max_bytes:
        raise ImageLoadError("too_large", f"{url} is {int(length):,} bytes, over the {policy.max_bytes:,}-byte limit")
    chunks, total = [], 0
    while True:
        # The timeout bounds the whole download, not each read. (http.client may already
        # have handed the socket over to the response, so use the one we connected.)
        conn.pinned_socket.settimeout(_remaining(deadline, url))  # type: ignore[attr-defined]
        chunk = resp.read1(min(1 << 16, policy.max_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > policy.max_bytes:
            raise ImageLoadError("too_large", f"{url} is over the {policy.max_bytes:,}-byte limit")


def _resolve_allowed(host: str, port: int, policy: ImagePolicy) -> str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ImageLoadError("fetch_failed", f"cannot resolve host {host!r}: {exc.strerror}", transient=True) from None
    addresses = [info[4][0] for info in infos]
    if not policy.allow_private_urls:
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            if ip.version == 6 and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if not ip.is_global:
                raise ImageLoadError(
                    "url_blocked",
                    f"{host} resolves to non-public address {ip}; fetching private, loopback or link-local "
                    "addresses is refused (set ZSTAGGER_ALLOW_PRIVATE_URLS=1 to allow it on a trusted network)",
                )
    return addresses[0]


class _PinnedConnection:
    """http.client connections that connect to a pre-checked IP but speak to ``host``."""

    @staticmethod
    def make(scheme: str, host: str, port: int, address: str, timeout: float) -> http.client.HTTPConnection:
        cls = _PinnedHTTPS if scheme == "https" else _PinnedHTTP
        conn = cls(host, port, timeout=timeout)
        conn.pinned_address = address
        return conn


class _PinnedHTTP(http.client.HTTPConnection):
    pinned_address: str

    def connect(self) -> None:
        self.sock = self.pinned_socket = socket.create_connection((self.pinned_address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    pinned_address: str

    def connect(self) -> None:
        sock = socket.create_connection((self.pinned_address, self.port), self.timeout)
        self.sock = self.pinned_socket = self._context.wrap_socket(sock, server_hostname=self.host)
