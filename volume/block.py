"""Block devices: the volumes of block storage domains (LVs on iSCSI/FC).

Always direct I/O: the page cache of a shared LUN is never trusted, since
another host may write the same device.  The alignment is the device's
logical block size (BLKSSZGET), not a guess.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator

from . import _linux
from ._direct import split
from ._fdvolume import PUNCH, FdVolume
from ._oserror import oserrors
from .base import Extent
from .errors import OutOfRange

_ZERO = _linux.FALLOC_FL_ZERO_RANGE | _linux.FALLOC_FL_KEEP_SIZE


class BlockVolume(FdVolume):
    """A block device opened by :func:`volume.open_volume`.

    Takes ownership of ``fd``; read-only follows its ``O_RDONLY`` flag, and
    ``O_DIRECT`` is turned on if the descriptor lacks it.
    """

    kind = "block"
    # No inode lock on a block device's direct I/O path: writers on
    # distinct ranges proceed in parallel down to the device queue.
    max_writers = 8
    real_extents = False

    def __init__(self, fd: int) -> None:
        with oserrors("open volume"):
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            if not flags & os.O_DIRECT:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
            block_size = _linux.logical_block_size(fd)
        super().__init__(fd, block_size)

    def size(self) -> int:
        """The device size, asked of the kernel each time (an LV may grow)."""
        with oserrors("stat"):
            return _linux.device_size(self._fd)

    def zero(self, offset: int, length: int, punch: bool = False) -> None:
        """Zero the range; the kernel wants whole logical blocks, so edges are written."""
        self._check_write(offset, length, "zero")
        with oserrors("zero"):
            for start, part, whole in split(offset, length, self._io.block_size):
                if whole:
                    self._zero_blocks(start, part, punch)
                else:
                    self._io.write_zeros(start, part)

    def _zero_blocks(self, offset: int, length: int, punch: bool) -> None:
        # blkdev_fallocate(): PUNCH_HOLE|KEEP_SIZE zeroes by unmapping only
        # (EOPNOTSUPP if the device cannot); ZERO_RANGE zeroes keeping the
        # blocks allocated.  BLKZEROOUT zeroes however it can, writing zero
        # pages as the last resort.
        mode = PUNCH if punch else _ZERO
        if not self._fallocate(mode, offset, length):
            _linux.blkzeroout(self._fd, offset, length)

    def extents(self) -> Iterator[Extent]:
        """One data extent: a block device cannot tell holes from data."""
        size = self.size()
        return iter([Extent(0, size, zero=False, hole=False)] if size else [])

    def _check_write(self, offset: int, length: int, what: str) -> None:
        super()._check_write(offset, length, what)
        size = self.size()
        if offset + length > size:
            raise OutOfRange(
                f"{what} of {length} bytes at {offset} goes past the end of the device "
                f"({size} bytes)", size)
