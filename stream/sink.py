"""The worker-thread side of an upload (:class:`Sink`): bytes to the volume
at increasing offsets, never past the ticket, hashed when asked.

It takes whole staging buffers of a plain body, and is the output of the
zstd stream writer for a compressed one, which it gathers into an aligned
buffer so the volume gets full, aligned writes.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from typing import Any

from volume.base import Volume
from volume.errors import OutOfRange

#: Decompressed output handed to the sink per call; bounds memory per stream.
ZSTD_WRITE_SIZE = 1 << 20


def too_big(start: int, limit: int) -> OutOfRange:
    """416 for a write at ``start`` that ends past ``limit``; it names the
    first byte past the limit the body tried to write, not ``start``."""
    return OutOfRange(
        f"upload goes past the end of the ticket ({limit} bytes) at offset "
        f"{max(start, limit)}", limit
    )


class Sink:
    """Worker-thread side: decoded bytes to the volume at increasing offsets.

    Used directly for plain bodies (whole staging buffers) and as the output
    of the zstd stream writer (pieces of at most ZSTD_WRITE_SIZE).
    """

    def __init__(
        self, volume: Volume, offset: int, limit: int, hasher: Any, out: mmap.mmap | None,
        check: Callable[[], None] = lambda: None,
    ) -> None:
        self.volume = volume
        self.check = check
        self.pos = offset
        self.limit = limit
        self.hasher = hasher
        self._view: memoryview | None = None
        self._head = 0
        self._fill = 0
        if out is not None:
            self.attach(out)

    def attach(self, out: mmap.mmap) -> None:
        """Gather decoded bytes in ``out`` (before the first write)."""
        self._view = memoryview(out)
        # Place data so buffer index == disk offset modulo the volume's
        # alignment: every full buffer after the first is then aligned.
        align = max(self.volume.capabilities.block_size, 1)
        self._head = self._fill = self.pos % align

    def put(self, view: memoryview) -> None:
        """Write a whole decoded piece at the current position."""
        if self.pos + len(view) > self.limit:
            raise too_big(self.pos, self.limit)
        # Per piece, not only per staging buffer: one buffer of zstd may
        # decode to the whole ticket, and a cancel must stop it.
        self.check()
        if self.hasher is not None:
            self.hasher.update(view)
        self.volume.write(self.pos, view)
        self.pos += len(view)

    # zstandard calls write() with decompressed data.
    def write(self, data: bytes) -> int:
        assert self._view is not None
        src = memoryview(data)
        while src:
            n = min(len(src), len(self._view) - self._fill)
            self._view[self._fill : self._fill + n] = src[:n]
            self._fill += n
            src = src[n:]
            if self._fill == len(self._view):
                self.drain()
        return len(data)

    def drain(self) -> None:
        if self._view is not None and self._fill > self._head:
            self.put(self._view[self._head : self._fill])
            self._head = self._fill = 0

    def release(self) -> None:
        if self._view is not None:
            self._view.release()
            self._view = None
