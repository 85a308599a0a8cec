"""Which network addresses a URL from an untrusted source may reach (SSRF protection).

The one owner of that rule: the HTTP client (:mod:`.fetch`) calls :func:`resolve_allowed`
for every hop of a redirect chain, whether it fetches an image or delivers a webhook, and
the producer checks a callback URL with it before enqueueing. Security-sensitive: keep it
small enough to review alone.

``ipaddress``'s ``is_global`` is not enough on its own: it accepts IPv6 forms that lead to
IPv4 hosts through translation or tunnels (IPv4-compatible ``::a.b.c.d``, local-use NAT64,
6to4, Teredo) and the deprecated site-local range. Those are refused outright. Two forms
carry the IPv4 address they reach and are judged by it: IPv4-mapped (``::ffff:a.b.c.d``,
what dual-stack resolvers return) and NAT64's well-known prefix ``64:ff9b::/96`` (on an
IPv6-only network with DNS64, every IPv4-only site resolves to one).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from ..errors import UrlBlockedError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
_REFUSED_V6 = (
    (ipaddress.ip_network("::/96"), "an IPv4-compatible address (deprecated; it leads to an IPv4 host)"),
    (ipaddress.ip_network("::ffff:0:0:0/96"), "an IPv4-translated address"),
    (ipaddress.ip_network("64:ff9b:1::/48"), "a local-use NAT64 address (translated to IPv4 inside the network)"),
    (ipaddress.ip_network("2002::/16"), "a 6to4 address (deprecated; it tunnels to the IPv4 address it embeds)"),
    (ipaddress.ip_network("2001::/32"), "a Teredo address (an IPv4 tunnel)"),
    (ipaddress.ip_network("fec0::/10"), "a site-local address (deprecated)"),
)


def blocked_reason(ip: IPAddress) -> str | None:
    """Why an untrusted URL may not reach ``ip``, or None when it is a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ipaddress.IPv6Address(int(ip))  # drop a %zone
        embedded = ip.ipv4_mapped or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64_WELL_KNOWN else None)
        if embedded is not None:
            reason = blocked_reason(embedded)
            return f"a translation of {embedded}, {reason}" if reason else None
        if not ip.is_global or ip.is_multicast:
            return _generic_reason(ip)
        for network, reason in _REFUSED_V6:
            if ip in network:
                if ip.sixtofour is not None:
                    reason += f", here {ip.sixtofour}"
                return reason
        return None
    if not ip.is_global or ip.is_multicast:
        return _generic_reason(ip)
    return None


def _generic_reason(ip: IPAddress) -> str:
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    return "a private or reserved address"


def check_address(ip: IPAddress, allow_private: bool) -> None:
    """Raise :class:`~zstagger.errors.UrlBlockedError` unless ``ip`` may be reached."""
    if allow_private:
        return
    reason = blocked_reason(ip)
    if reason:
        raise UrlBlockedError(f"{ip} is {reason}")


def resolve_allowed(host: str, port: int, allow_private: bool, timeout: float) -> list[str]:
    """The addresses of ``host``, every one of them checked; connect to one of these, not to ``host``.

    Raises :class:`~zstagger.errors.UrlBlockedError` if any address may not be reached (a
    name that resolves to one private address among public ones is refused: the client
    cannot know which one it would get), :class:`socket.gaierror` when the name does not
    resolve and :class:`TimeoutError` when resolving takes longer than ``timeout`` seconds
    (``getaddrinfo`` has no timeout of its own, so it runs in a small pool of threads).
    """
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [host]
    else:
        future = _resolver().submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
        try:
            infos = future.result(timeout=max(0.0, timeout))
        except FutureTimeout:
            future.cancel()
            raise TimeoutError(f"resolving {host} took longer than {timeout:.3g}s") from None
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
    for address in addresses if not allow_private else ():
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        reason = blocked_reason(ip)
        if reason:
            raise UrlBlockedError(f"{host} resolves to non-public address {ip} ({reason})")
    return addresses


# Lookups that hang (a dead DNS server) keep their thread until the system resolver gives
# up; a small pool bounds how many threads that can tie up.
_RESOLVER_THREADS = 4
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _resolver() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_RESOLVER_THREADS, thread_name_prefix="zstagger-dns")
        return _pool


def _forget_pool_after_fork() -> None:  # a forked child (a Celery worker process) has none of its threads
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_after_fork)
