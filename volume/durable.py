"""Durable writes, in one place.

The recipe: write a temp file in the target directory (same filesystem),
fsync it, rename over the target, fsync the directory.  A crash at any point
leaves either the old file or the new one, never a torn mix, and the last
good copy is never lost.
"""

from __future__ import annotations

import errno
import logging
import os

from . import _linux

log = logging.getLogger(__name__)

_ZEROS = bytes(1 << 20)

#: Files being written by atomic_write start so (and are never an image).
TMP_PREFIX = ".tmp-"


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir_at(dir_fd: int) -> None:
    """fsync the directory ``dir_fd``; an ``O_PATH`` descriptor will do (it
    cannot be fsynced itself, so the directory is opened again through it)."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` durably and atomically."""
    directory = os.open(os.path.dirname(os.path.abspath(path)),
                        os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        atomic_write_at(directory, os.path.basename(path), data, mode)
    finally:
        os.close(directory)


def atomic_write_at(dir_fd: int, name: str, data: bytes, mode: int = 0o644) -> None:
    """Replace ``name`` in the directory ``dir_fd`` (``O_PATH`` will do)
    with ``data``, durably and atomically: a temporary file made there with
    ``O_EXCL|O_NOFOLLOW``, fsynced, renamed over ``name`` (a link at
    ``name`` is replaced, never followed), then the directory fsynced."""
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"not a name in a directory: {name!r}")
    tmp = f"{TMP_PREFIX}{os.urandom(8).hex()}.part"  # O_EXCL catches a repeat
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fchmod(fd, mode)
        os.fsync(fd)
        # Forgotten first: close(2) releases the descriptor even when it
        # fails, so the cleanup below must not close that number again.
        fd, closing = -1, fd
        os.close(closing)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        tmp = ""
        fsync_dir_at(dir_fd)
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp:
            os.unlink(tmp, dir_fd=dir_fd)


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


def remove_durable(path: str) -> None:
    """Remove a file (or an empty directory) and fsync its parent.

    A path that is already gone is fine, and its parent is still synced:
    removal is how a crashed delete is finished, and the crash may have come
    between the unlink and the fsync.
    """
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def preallocate(fd: int, offset: int, length: int) -> None:
    """Allocate ``[offset, offset+length)`` of a file, extending it.

    ``fallocate(2)``, or writing zeros where the filesystem lacks it (NFS
    before v4.2 answers EOPNOTSUPP).  Out of space raises ENOSPC here, up
    front, rather than in the middle of a transfer.
    """
    try:
        _linux.fallocate(fd, 0, offset, length)
        return
    except OSError as e:
        if e.errno != errno.EOPNOTSUPP:
            raise
    log.debug("fallocate unsupported, writing %d bytes of zeros", length)
    zeros = memoryview(_ZEROS)
    pos, end = offset, offset + length
    while pos < end:
        pos += os.pwrite(fd, zeros[:min(len(zeros), end - pos)], pos)
