"""Reading a local file named by someone else: regular files only, size-capped, never blocking.

The one owner of that rule: image paths (the Tagger, ``zstagger tag``, queue workers),
``enqueue --upload`` and taxonomy files all read through :func:`read_regular_file`. A FIFO,
socket or device (or a symlink to one) is refused before anything is read from it, so it can
neither block the reader nor feed it bytes without end. Security-sensitive: keep it small.
Imports nothing from zstagger but its errors.
"""

from __future__ import annotations

import os
import stat

from .errors import FileReadError

_CHUNK = 1 << 20
_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


def read_regular_file(path: str | bytes | os.PathLike, max_bytes: int, limit_name: str | None = None) -> bytes:
    """The bytes of the regular file at ``path``, at most ``max_bytes`` of them.

    Raises :class:`~zstagger.errors.FileReadError` with a ``kind``: ``not_found``,
    ``not_a_file`` (a directory, FIFO, socket or device), ``too_large`` (naming
    ``limit_name``, the setting that raises the cap) or ``unreadable``.
    """
    name = os.fsdecode(path)
    try:
        _require_regular(os.stat(path), name)  # before open(): opening some devices has effects
        fd = os.open(path, _FLAGS)  # O_NONBLOCK: a FIFO swapped in after the stat cannot block
    except (FileNotFoundError, NotADirectoryError):
        raise FileReadError("not_found", f"no such file: {name}") from None
    except PermissionError:
        raise FileReadError("unreadable", f"permission denied: {name}") from None
    except OSError as exc:
        raise FileReadError("unreadable", f"cannot open {name}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)  # what was opened, not what the path named a moment ago
        _require_regular(info, name)
        if info.st_size > max_bytes:
            raise _too_large(name, max_bytes, limit_name, info.st_size)
        chunks, total = [], 0
        while total <= max_bytes:  # the file may have grown since fstat
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - total))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
        raise _too_large(name, max_bytes, limit_name)
    except OSError as exc:
        raise FileReadError("unreadable", f"cannot read {name}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _require_regular(info: os.stat_result, name: str) -> None:
    if stat.S_ISREG(info.st_mode):
        return
    if stat.S_ISDIR(info.st_mode):
        raise FileReadError("not_found", f"{name} is a directory, not a file")
    what = _KINDS.get(stat.S_IFMT(info.st_mode), "not a plain file")
    raise FileReadError("not_a_file", f"{name} is not a regular file ({what}); only regular files are read")


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


def _too_large(name: str, max_bytes: int, limit_name: str | None, size: int | None = None) -> FileReadError:
    size_text = f"{size:,} bytes" if size is not None else "larger than that"
    raise_hint = f"; raise {limit_name} if it is genuine" if limit_name else ""
    return FileReadError("too_large", f"{name} is {size_text}, over the limit of {_human(max_bytes)}{raise_hint}")


def _human(count: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size and count % size == 0:
            return f"{count // size} {unit}"
    return f"{count:,} bytes"
