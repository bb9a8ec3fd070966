"""The data file of a file-domain volume: made and grown, then synced.

raw or qcow2 (through qemu-img), sparse or preallocated.  What the volume
is lives in its ``.meta`` file, written by ``filedomain`` after these
return: the data is always complete before the metadata claims it.
"""

from __future__ import annotations

import contextlib
import os

from . import _confined, qcow2, qemuimg
from .durable import fsync_dir, fsync_dir_at, preallocate
from .sd import Allocation, Format, VolumeInfo

#: A volume's data file: the daemon's user and group (vdsm's kvm group, for
#: qemu) read and write it, nobody else reads a guest's disk.
DATA_MODE = 0o660


def _grow_raw(fd: int, old: int, new: int, prealloc: bool) -> None:
    if prealloc:
        preallocate(fd, old, new - old)
    else:
        os.ftruncate(fd, new)


def make(info: VolumeInfo, backing: VolumeInfo | None, dir_fd: int | None = None) -> None:
    """Create ``info.path`` (it must not exist), synced with its directory;
    a qcow2 overlay names ``backing`` by its volume UUID (a sibling file).

    With ``dir_fd`` (its directory, opened inside the domain) the file is
    made there, following no symlink, and qemu-img formats that very file
    (``/proc/self/fd``): a name planted meanwhile leads nowhere else."""
    prealloc = info.allocation == Allocation.PREALLOCATED
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    if dir_fd is None:
        fd = os.open(info.path, flags, DATA_MODE)
    else:
        fd = os.open(os.path.basename(info.path), flags, DATA_MODE, dir_fd=dir_fd)
    try:
        if info.format == Format.QCOW2:
            qemuimg.create(
                fd, info.size, preallocation="falloc" if prealloc else None,
                backing=backing.vol_uuid if backing else None,
                backing_format=str(backing.format) if backing else None,
            )
        else:
            _grow_raw(fd, 0, info.size, prealloc)
        os.fsync(fd)
    finally:
        os.close(fd)
    if dir_fd is None:
        fsync_dir(os.path.dirname(info.path))
    else:
        fsync_dir_at(dir_fd)


def open_fd(info: VolumeInfo, flags: int) -> int:
    """Open the existing data of ``info``, inside its domain if it has one."""
    if info.within is None:
        return os.open(info.path, flags)
    return _confined.open_file(info.within, info.path, "volume", lambda p: os.open(p, flags))


def grow(info: VolumeInfo, size: int) -> None:
    """Grow the data of ``info`` to ``size`` bytes (virtual, for qcow2), synced."""
    prealloc = info.allocation == Allocation.PREALLOCATED
    # Opened, and so checked, first; qemu-img then opens this very file
    # (/proc/self/fd), never the name again.
    fd = open_fd(info, (os.O_RDWR if info.format == Format.QCOW2 else os.O_WRONLY)
                 | os.O_CLOEXEC)
    try:
        if info.format == Format.QCOW2:
            qcow2.check_fd(fd, info.vol_uuid, info.parent)  # its header is the uploader's
            qemuimg.resize(fd, size, preallocation="falloc" if prealloc else None)
        if info.format == Format.RAW:
            old = os.fstat(fd).st_size
            try:
                _grow_raw(fd, info.size, size, prealloc)
            except BaseException:
                # A fallocate that runs out of space keeps the blocks it got
                # and the size they reach (ext4): give them back.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, old)
                raise
        os.fsync(fd)
    finally:
        os.close(fd)
