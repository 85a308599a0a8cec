"""Which source references may be read at all: the one owner of that rule.

Security-sensitive; keep it small. For object stores and plugin schemes (everything but local
paths, ``file:``, ``http(s):`` and ``data:``, which have their own rules in
:mod:`zstagger.files` and :mod:`zstagger.net`):

- credentials never travel in a reference (``s3://KEY:SECRET@bucket/...``): the process
  reading it uses its own (environment, config files, instance roles);
- no fsspec chaining (``simplecache::s3://...``), queries or fragments, no ``.``/``..`` segments;
- the allow-list (``ZSTAGGER_SOURCE_ALLOW``), when it names any location, is the only place
  such references are read from; when empty, trusted callers (CLI, Python, workers) may read
  whatever their credentials reach, and requests arriving over HTTP may read none.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from urllib.parse import urlsplit

from ..errors import SourceRefusedError

#: Schemes whose rules live elsewhere (files, the hardened HTTP client, inline bytes).
OWN_RULES = frozenset({"", "file", "http", "https", "data"})


def scheme_of(ref: object) -> str:
    """The lower-case scheme of a string reference ('' for a local path, Windows drives included)."""
    if not isinstance(ref, (str, os.PathLike)):
        return ""
    text = os.fspath(ref)
    if not isinstance(text, str):
        return ""
    head, sep, _ = text[:40].partition(":")
    if not sep or len(head) < 2 or not head.replace("+", "").replace("-", "").replace(".", "").isalnum():
        return ""
    if head.lower() == "data" or text[len(head):len(head) + 3] == "://" or text[len(head):len(head) + 2] == "::":
        return head.lower()  # (``name::`` opens an fsspec chain: a scheme, refused below)
    return ""


def is_source_url(ref: object) -> bool:
    """A reference that a source other than the local-file, http(s) and data: ones reads."""
    return scheme_of(ref) not in OWN_RULES


def check_reference(url: str, allow: Sequence[str], *, trusted: bool = True, what: str = "read") -> str:
    """``url`` if it may be read (or written, ``what``), else a :class:`SourceRefusedError` saying why."""
    scheme = scheme_of(url)
    if scheme in OWN_RULES:
        return url
    shown = _without_credentials(url)
    if "::" in url:
        raise SourceRefusedError(f"chained URLs are refused: {shown!r} (give one {scheme}:// URL)")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise SourceRefusedError(f"malformed URL {shown!r}: {exc}") from None
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise SourceRefusedError(
            f"credentials in a URL are refused ({shown}): the process that reads it uses its own "
            "(environment variables, the cloud's config files or instance role)")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise SourceRefusedError(f"{shown!r}: queries and fragments are refused in {scheme}:// URLs")
    if not parts.netloc:
        raise SourceRefusedError(f"{shown!r} names no bucket or container")
    if any(segment in (".", "..") for segment in parts.path.split("/")):
        raise SourceRefusedError(f"{shown!r}: '.' and '..' segments are refused")
    if allow:
        if not any(_within(url, entry) for entry in allow):
            setting = "ZSTAGGER_SINK_ALLOW" if what == "write" else "ZSTAGGER_SOURCE_ALLOW"
            raise SourceRefusedError(f"{shown} is outside the locations that may be {what} ({setting})")
    elif not trusted:
        setting = "ZSTAGGER_SINK_ALLOW" if what == "write" else "ZSTAGGER_SOURCE_ALLOW"
        raise SourceRefusedError(
            f"{scheme}:// references are refused over HTTP unless {setting} names their location on the server")
    return url


def _within(url: str, entry: str) -> bool:
    entry = entry.strip()
    if not entry:
        return False
    if url == entry or entry.endswith("/") and url.startswith(entry):
        return True
    return url.startswith(entry + "/")


def _without_credentials(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url[:200]
    host_and_path = rest.split("@", 1)[1]
    return f"{scheme}://****@{host_and_path}"[:200]
