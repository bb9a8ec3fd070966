"""A read-only, seekable file object over a Volume.

Lets stdlib readers (``tarfile``) walk a volume's bytes without loading
them: a tar index reads one header per member and seeks over the data.
Blocking, like every Volume call.
"""

from __future__ import annotations

import io
import os

from .base import Volume


class VolumeReader(io.RawIOBase):
    def __init__(self, volume: Volume, size: int) -> None:
        super().__init__()
        self._volume = volume
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        pos = base + offset
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(buf), self._size - self._pos)
        if want <= 0:
            return 0
        with memoryview(buf) as view:
            n = self._volume.readinto(self._pos, view[:want])
        self._pos += n
        return n
