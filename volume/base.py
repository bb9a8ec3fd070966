"""The contract every volume backend implements.

A volume is a fixed-size array of bytes addressed by absolute offsets.  All
methods are blocking and are meant to run in the daemon's bounded executor,
never on the event loop.  Positional I/O (``pread``/``pwrite``) makes one open
volume safe for concurrent requests on distinct ranges, which is what lets the
image API advertise ``max_writers > 1`` for block devices.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .errors import VolumeError


@dataclass(frozen=True)
class Capabilities:
    #: Alignment required for direct I/O (offset, length and memory); 1 when
    #: the volume is buffered and any alignment works.
    block_size: int
    #: What OPTIONS advertises to the ovirt-imageio client.
    max_readers: int
    max_writers: int
    #: The volume can deallocate (punch holes) when zeroing with ``punch=True``.
    can_punch: bool
    #: ``extents()`` reports real holes/zero ranges (not one data extent).
    real_extents: bool


@dataclass(frozen=True)
class Extent:
    start: int
    length: int
    zero: bool
    hole: bool

    @property
    def end(self) -> int:
        return self.start + self.length


@runtime_checkable
class Volume(Protocol):
    """A storage volume: a regular file, a block device or a memory fake."""

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def readonly(self) -> bool: ...

    def size(self) -> int:
        """Current size in bytes (for block devices, the device size)."""
        ...

    def readinto(self, offset: int, buf: memoryview) -> int:
        """Read up to ``len(buf)`` bytes at ``offset``; return how many.

        Returns fewer bytes only at the end of the volume.  Any alignment of
        ``offset`` and ``buf`` is accepted; aligned calls take the fast path.
        """
        ...

    def write(self, offset: int, buf: memoryview) -> None:
        """Write all of ``buf`` at ``offset``.

        Any alignment is accepted: unaligned edges are read-modify-written.
        Writing past the end of a file volume extends it; block devices
        raise :class:`volume.errors.OutOfRange`.
        """
        ...

    def zero(self, offset: int, length: int, punch: bool = False) -> None:
        """Make ``[offset, offset+length)`` read as zeros.

        With ``punch=True`` the range may be deallocated (sparse); otherwise
        it stays allocated.  Falls back to writing zeros when the kernel or
        filesystem supports neither.
        """
        ...

    def flush(self) -> None:
        """Make everything written so far durable (fsync)."""
        ...

    def extents(self) -> Iterator[Extent]:
        """Contiguous extents covering ``[0, size())``, data and zero/holes."""
        ...

    def close(self) -> None: ...


def read_exactly(volume: Volume, offset: int, view: memoryview, what: str = "volume") -> None:
    """Fill ``view`` from ``offset``; VolumeError naming ``what`` if the
    volume ends first (``readinto`` may return less than asked)."""
    got = 0
    while got < len(view):
        n = volume.readinto(offset + got, view[got:])
        if n == 0:
            raise VolumeError(f"the {what} ended at {offset + got}, "
                              f"before {offset + len(view)}")
        got += n
