"""A store's archive area while an update writes it (:class:`StoreArea`).

Its first :data:`HEAD` bytes are held in memory and written last, once the
rest of the archive is synced and checked (why: :mod:`volume.ovfupdate`),
and it refuses I/O once its update has ended.
"""

from __future__ import annotations

from .base import Volume
from .errors import ChecksumMismatch, Conflict
from .ovfrecord import aligned_view
from .region import RegionVolume

#: Written last (see above): the first tar header, rounded up to the largest
#: logical block size, so it is one direct write on any device.
HEAD = 4096


def update_ended() -> Conflict:
    return Conflict("the OVF update has already ended")


class StoreArea(RegionVolume):
    """A store's archive area while it is written: its first :data:`HEAD`
    bytes are kept in memory until :meth:`write_head`, and it refuses I/O
    once the update has ended, so a late write can never touch a committed
    (or abandoned) store.  Closing it closes the store's volume."""

    ended = False

    def __init__(self, inner: Volume, length: int) -> None:
        super().__init__(inner, 0, length)
        self._head = bytearray(min(HEAD, length))

    def _check(self, offset: int, length: int) -> None:
        if self.ended:
            raise update_ended()
        super()._check(offset, length)

    def _in_head(self, offset: int, length: int) -> int:
        """How many of the bytes from ``offset`` fall in the held head."""
        self._check(offset, length)
        return max(0, min(length, len(self._head) - offset))

    def write(self, offset: int, buf: memoryview) -> None:
        if n := self._in_head(offset, len(buf)):
            self._head[offset:offset + n] = buf[:n]
            offset, buf = offset + n, buf[n:]
        if len(buf):
            super().write(offset, buf)

    def zero(self, offset: int, length: int, punch: bool = False) -> None:
        if n := self._in_head(offset, length):
            self._head[offset:offset + n] = bytes(n)
            offset, length = offset + n, length - n
        if length:
            super().zero(offset, length, punch)

    def readinto(self, offset: int, buf: memoryview) -> int:
        got = super().readinto(offset, buf)
        if n := self._in_head(offset, got):
            buf[:n] = self._head[offset:offset + n]
        return got

    def flush(self) -> None:
        if self.ended:
            raise update_ended()
        super().flush()

    def write_head(self) -> None:
        """Write the held bytes, synced: call once the rest of the archive is
        synced and checked.  They are read back; bytes that differ are
        zeroed again (ChecksumMismatch), so a tar reader still finds none."""
        n = len(self._head)
        with aligned_view(HEAD) as view:
            view[:n] = self._head
            super().write(0, view[:n])
            self.flush()  # a committed record then implies a durable head
            view[:n] = bytes(n)
            if super().readinto(0, view[:n]) != n or view[:n] != self._head:
                super().zero(0, n)
                self.flush()
                raise ChecksumMismatch("the archive's first block reads back other than "
                                       "it was written")
