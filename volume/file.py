"""Regular files: the volumes of file storage domains (NFS, local, Gluster).

Direct I/O keeps a multi-GiB upload from evicting the host's page cache.
The alignment a filesystem wants is not advertised anywhere, so it is
probed once per open, as ovirt-imageio's file backend does.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import Iterator

from . import _linux
from ._direct import AlignedIO
from ._fdvolume import PUNCH, FdVolume
from ._oserror import oserrors
from .base import Extent
from .buffers import aligned_buffer

log = logging.getLogger(__name__)



def detect_block_size(fd: int) -> int:
    """The alignment direct I/O on ``fd`` needs: 512 or 4096.

    Tries direct reads of 1, 512 and 4096 bytes; the first the kernel does not
    reject with EINVAL wins.  The reads must hit allocated data: holes and
    EOF satisfy any read without reaching the device (measured on ext4 and
    tmpfs, Linux 6.18: a 1-byte direct read of a hole or an empty file
    succeeds).  With no data to probe, 4096 is assumed; it is a multiple of
    every common logical block size, so it is always safe, at the cost of
    read-modify-write for 512-aligned edges.
    """
    try:
        start = os.lseek(fd, 0, os.SEEK_DATA)
    except OSError as e:
        if e.errno == errno.ENXIO:
            log.debug("no allocated data to probe, assuming block_size=4096")
            return 4096
        if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
        start = 0  # no SEEK_DATA support: probe the start of the file
    start -= start % 4096
    buf = aligned_buffer(4096)
    try:
        for size in (1, 512, 4096):
            try:
                os.preadv(fd, [memoryview(buf)[:size]], start)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                continue
            # 1 byte works when the filesystem does not enforce alignment
            # (NFS; tmpfs since Linux 6.6).  imageio then uses 4096 so that
            # the NFS server receives whole blocks; so do we.
            return 4096 if size == 1 else size
    finally:
        buf.close()
    raise OSError(errno.EINVAL, "no direct I/O alignment up to 4096 works")


class FileVolume(FdVolume):
    """A regular file opened by :func:`volume.open_volume`.

    Takes ownership of ``fd``.  Read-only and direct I/O follow the flags
    ``fd`` was opened with (``O_RDONLY``, ``O_DIRECT``).
    """

    kind = "file"
    # ext4 and XFS take the inode lock exclusively for direct writes that
    # extend the file or are unaligned, so writers beyond a few mostly queue.
    max_writers = 4
    real_extents = True

    def __init__(self, fd: int) -> None:
        with oserrors("open volume"):
            direct = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
            block_size = detect_block_size(fd) if direct else 1
        super().__init__(fd, block_size)

    def size(self) -> int:
        with oserrors("stat"):
            return os.fstat(self._fd).st_size

    def zero(self, offset: int, length: int, punch: bool = False) -> None:
        self._check_write(offset, length, "zero")
        if length == 0:
            return
        with oserrors("zero"):
            # Under the read-modify-write lock (AlignedIO._rmw) when the range
            # shares a block with other bytes: a write to the rest of that
            # block reads it before the zero and writes the old bytes back
            # after.  And when growing the file: an RMW briefly extends the
            # last block and truncates it back, so a size seen during that
            # window is up to a block too large.
            bs = self._io.block_size
            end = offset + length
            if (bs > 1 and (offset % bs or end % bs)) or end + bs > os.fstat(self._fd).st_size:
                with self._io.lock:
                    self._zero(offset, length, punch)
            else:
                self._zero(offset, length, punch)

    def _zero(self, offset: int, length: int, punch: bool) -> None:
        end = offset + length
        if punch and self._fallocate(PUNCH, offset, length):
            # KEEP_SIZE is mandatory with PUNCH_HOLE (fallocate(2)); grow
            # the file ourselves when the range ends past EOF.
            if os.fstat(self._fd).st_size < end:
                os.ftruncate(self._fd, end)
            return
        # Filesystems that lack a mode say EOPNOTSUPP: tmpfs has no
        # ZERO_RANGE, NFS before 4.2 has no fallocate at all.
        if self._fallocate(_linux.FALLOC_FL_ZERO_RANGE, offset, length):
            return
        if (self._fallocate.supports(0) and self._fallocate(PUNCH, offset, length)
                and self._fallocate(0, offset, length)):
            return
        self._io.write_zeros(offset, length)

    def extents(self) -> Iterator[Extent]:
        """Data and hole extents from SEEK_DATA/SEEK_HOLE (lseek(2)).

        Unwritten extents (from ZERO_RANGE or preallocation) read as zeros
        and ext4 reports them as holes too (measured on Linux 6.18), so
        "hole" here means "reads as zeros without I/O", not "unallocated".
        A filesystem without SEEK_DATA reports the whole file as data.
        """
        with oserrors("extents"):
            size = os.fstat(self._fd).st_size
            try:
                found = list(self._seek_extents(size))
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                found = [Extent(0, size, zero=False, hole=False)] if size else []
        return iter(found)

    def _seek_extents(self, size: int) -> Iterator[Extent]:
        pos = 0
        while pos < size:
            data = self._seek(pos, os.SEEK_DATA, size)
            if data > pos:
                yield Extent(pos, data - pos, zero=True, hole=True)
            if data >= size:
                return
            hole = self._seek(data, os.SEEK_HOLE, size)
            yield Extent(data, hole - data, zero=False, hole=False)
            pos = hole

    def _seek(self, pos: int, whence: int, size: int) -> int:
        """lseek(pos, whence) clamped to ``size``; ENXIO (nothing more to
        find, or the file shrank under us) gives ``size``."""
        try:
            return min(os.lseek(self._fd, pos, whence), size)
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
            return size


def create(path: str, size: int, sparse: bool) -> None:
    """Create a new regular file of ``size`` bytes; fail if ``path`` exists.

    ``sparse=True`` makes it all holes (ftruncate); ``sparse=False``
    allocates every block (fallocate mode 0, or writing zeros where the
    filesystem lacks fallocate).  Not durable: fsync is the caller's choice.
    """
    with oserrors("create volume"):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o660)
        try:
            if sparse or size == 0:
                os.ftruncate(fd, size)
            else:
                _preallocate(fd, size)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)


def _preallocate(fd: int, size: int) -> None:
    if not _linux.Fallocate(fd)(0, 0, size):
        log.debug("writing %d zero bytes instead", size)
        io = AlignedIO(fd, 1, regular_file=True)
        try:
            io.write_zeros(0, size)
        finally:
            io.close()
