"""Storage volumes: regular files, block devices and an in-memory fake.

:func:`open_volume` is the one way in for a path.  It decides the backend
from what the opened descriptor is (``fstat``), never from the name, so a
symlink or an unusual device path cannot pick the wrong one.  A file
domain's volume is opened ``within`` the domain's directory, through no
symlink and only as a regular file (:mod:`volume._confined`).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat

from . import _confined
from ._oserror import oserrors
from .base import Capabilities, Extent, Volume
from .block import BlockVolume
from .buffers import aligned_buffer, is_aligned
from .errors import InvalidRequest
from .file import FileVolume
from .memory import MemoryVolume

__all__ = [
    "BlockVolume",
    "Capabilities",
    "Extent",
    "FileVolume",
    "MemoryVolume",
    "Volume",
    "aligned_buffer",
    "is_aligned",
    "open_volume",
]

log = logging.getLogger(__name__)


def open_volume(path: str, readonly: bool = False, *, direct: bool = True,
                within: str | None = None) -> Volume:
    """Open the regular file or block device at ``path``.

    ``readonly`` opens it ``O_RDONLY``; writes then raise ``Forbidden``.
    ``direct`` asks for ``O_DIRECT`` on files; a filesystem that refuses it
    is used buffered instead.  Block devices are always direct.  Other file
    types raise ``InvalidRequest``; failing to open raises the mapped error
    (``NotFound``, ``Forbidden``, ...).  ``within``: the directory of the
    file domain that ``path`` (a real path) belongs to; then ``path`` is
    opened only as a regular file with one link, following no symlink below
    ``within`` (``Forbidden`` otherwise).  ``None`` (a registered block
    device) follows symlinks such as ``/dev/disk/by-id/...``.  Blocking: run
    it in the executor.
    """
    # O_NONBLOCK: opening a FIFO read-only would otherwise wait for a writer
    # before we can refuse it (fifo(7)).  O_NOCTTY: a terminal path must not
    # become our controlling terminal.  Both are cleared or harmless below.
    flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    with oserrors("open volume"):
        if within is None:
            fd = _open(path, flags, direct)
        else:
            fd = _confined.open_file(within, path, "volume",
                                     lambda p: _open(p, flags, direct))
    try:
        with oserrors("open volume"):
            mode = os.fstat(fd).st_mode
            if stat.S_ISREG(mode) or stat.S_ISBLK(mode):
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        if stat.S_ISBLK(mode):
            return BlockVolume(fd)
        if stat.S_ISREG(mode):
            return FileVolume(fd)
        raise InvalidRequest("the volume is neither a regular file nor a block device")
    except BaseException:
        os.close(fd)
        raise


def _open(path: str, flags: int, direct: bool) -> int:
    if not direct:
        return os.open(path, flags)
    try:
        return os.open(path, flags | os.O_DIRECT)
    except OSError as e:
        # open(2): EINVAL when the filesystem does not support O_DIRECT
        # (tmpfs before Linux 6.6, some FUSE filesystems).
        if e.errno != errno.EINVAL:
            raise
        log.debug("O_DIRECT not supported, opening buffered")
        return os.open(path, flags)
