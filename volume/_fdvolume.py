"""The half of a volume that files and block devices share.

Both own one descriptor and read and write it through :class:`AlignedIO`;
they differ in size, zeroing, extents and what lies past the end, which
:mod:`volume.file` and :mod:`volume.block` add.
"""

from __future__ import annotations

import fcntl
import logging
import os
from typing import ClassVar

from . import _linux
from ._direct import AlignedIO
from ._oserror import oserrors
from .base import Capabilities
from .errors import Forbidden, InvalidRequest

log = logging.getLogger(__name__)

PUNCH = _linux.FALLOC_FL_PUNCH_HOLE | _linux.FALLOC_FL_KEEP_SIZE


class FdVolume:
    """A volume on an open descriptor; takes ownership of ``fd``.

    ``block_size`` is the alignment the descriptor needs (1 if buffered);
    read-only follows the ``O_RDONLY`` flag ``fd`` was opened with.
    """

    #: For logs: "file" or "block".
    kind: ClassVar[str]
    #: What OPTIONS advertises; see the subclasses for why.
    max_writers: ClassVar[int]
    real_extents: ClassVar[bool]

    def __init__(self, fd: int, block_size: int) -> None:
        self._fd = fd
        with oserrors("open volume"):
            self._readonly = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
            self._io = AlignedIO(fd, block_size, regular_file=self.kind == "file")
        # Remembers which fallocate modes work here, as imageio does.
        self._fallocate = _linux.Fallocate(fd)
        log.debug("opened %s volume fd=%d block_size=%d readonly=%s",
                  self.kind, fd, block_size, self._readonly)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(block_size=self._io.block_size, max_readers=8,
                            max_writers=self.max_writers,
                            can_punch=self._fallocate.supports(PUNCH),
                            real_extents=self.real_extents)

    @property
    def readonly(self) -> bool:
        return self._readonly

    def readinto(self, offset: int, buf: memoryview) -> int:
        with oserrors("read"):
            return self._io.readinto(offset, buf)

    def write(self, offset: int, buf: memoryview) -> None:
        self._check_write(offset, len(buf), "write")
        with oserrors("write"):
            self._io.write(offset, buf)

    def flush(self) -> None:
        with oserrors("flush"):
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd < 0:
            return
        # Forget the descriptor before closing it: close(2) releases it even
        # when it fails (EIO from NFS), so a second close() must not close
        # the number again, by then perhaps another file's.
        fd, self._fd = self._fd, -1
        self._io.close()
        self._fallocate.close()
        with oserrors("close"):
            os.close(fd)
        log.debug("closed %s volume fd=%d", self.kind, fd)

    def _check_write(self, offset: int, length: int, what: str) -> None:
        """Refuse a write or zero the volume cannot take, before any I/O."""
        if self._readonly:
            raise Forbidden("the volume is open read-only")
        if offset < 0 or length < 0:
            raise InvalidRequest(f"invalid {what} range offset={offset} length={length}")
