"""Thin wrappers over the Linux calls the standard library lacks.

Each raises ``OSError`` with the kernel's errno, like the ``os`` functions,
so ``volume._oserror`` maps them in the same place.  All of them release the
GIL while the kernel works: ctypes ``CDLL`` calls do, and so does
``fcntl.ioctl``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import struct

log = logging.getLogger(__name__)

# include/uapi/linux/falloc.h
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

# include/uapi/linux/fs.h: _IO(0x12, n) and _IOR(0x12, 114, size_t).
BLKSSZGET = 0x1268
BLKDISCARD = 0x1277
BLKZEROOUT = 0x127F
BLKGETSIZE64 = 0x80081272

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
# glibc's fallocate takes a 64-bit off_t on the 64-bit platforms we run on.
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2): allocate, zero or punch ``[offset, offset+length)``.

    ``mode`` is 0 or an OR of the ``FALLOC_FL_*`` flags.  A filesystem or
    device that lacks the mode fails with EOPNOTSUPP.
    """
    if _fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Fallocate:
    """fallocate(2) on one descriptor, remembering the modes it lacks.

    A mode that failed once with EOPNOTSUPP is not tried again: the answer
    depends on the filesystem or device, which does not change while open.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._unsupported: set[int] = set()

    def close(self) -> None:
        """Forget the descriptor: a late call fails (EBADF) instead of reaching
        whatever file reuses its number."""
        self._fd = -1

    def supports(self, mode: int) -> bool:
        """False once ``mode`` has failed with EOPNOTSUPP."""
        return mode not in self._unsupported

    def __call__(self, mode: int, offset: int, length: int) -> bool:
        """Run fallocate; False if ``mode`` is unsupported, other errors raise."""
        if mode in self._unsupported:
            return False
        try:
            fallocate(self._fd, mode, offset, length)
        except OSError as e:
            if e.errno != errno.EOPNOTSUPP:
                raise
            log.debug("fallocate mode=%#x not supported, falling back", mode)
            self._unsupported.add(mode)
            return False
        return True


def _range_ioctl(fd: int, request: int, offset: int, length: int) -> None:
    # BLKZEROOUT and BLKDISCARD take a uint64_t[2] {start, length} in bytes;
    # both must be multiples of the logical block size or the kernel says EINVAL.
    fcntl.ioctl(fd, request, struct.pack("=QQ", offset, length))


def blkzeroout(fd: int, offset: int, length: int) -> None:
    """BLKZEROOUT: make the device range read as zeros (writes if it must)."""
    _range_ioctl(fd, BLKZEROOUT, offset, length)


def blkdiscard(fd: int, offset: int, length: int) -> None:
    """BLKDISCARD: discard the device range; its contents become undefined."""
    _range_ioctl(fd, BLKDISCARD, offset, length)


def device_size(fd: int) -> int:
    """BLKGETSIZE64: the size of the block device in bytes."""
    out = fcntl.ioctl(fd, BLKGETSIZE64, struct.pack("=Q", 0))
    size: int = struct.unpack("=Q", out)[0]
    return size


def logical_block_size(fd: int) -> int:
    """BLKSSZGET: the smallest unit the device can address (512 or 4096)."""
    out = fcntl.ioctl(fd, BLKSSZGET, struct.pack("=i", 0))
    size: int = struct.unpack("=i", out)[0]
    return size
