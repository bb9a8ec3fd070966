"""Durable writes, in one place.

The recipe: write a temp file in the target directory (same filesystem),
fsync it, rename over the target, fsync the directory.  A crash at any point
leaves either the old file or the new one, never a torn mix, and the last
good copy is never lost.
"""

from __future__ import annotations

import os
import tempfile


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` durably and atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fchmod(fd, mode)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, path)
        tmp = ""
        fsync_dir(directory)
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp:
            os.unlink(tmp)


def makedirs_durable(path: str, mode: int = 0o755) -> None:
    """``os.makedirs`` that also fsyncs each parent of a directory it made."""
    path = os.path.abspath(path)
    missing = []
    p = path
    while not os.path.isdir(p):
        missing.append(p)
        p = os.path.dirname(p)
    for d in reversed(missing):
        os.mkdir(d, mode)
        fsync_dir(os.path.dirname(d))
