"""An in-memory volume: the fake that tests of other packages use.

It keeps the same contract as the real backends, including what
``extents()`` reports: it remembers which ranges were zeroed (allocated
zeros) or punched (holes), so a test can check that a PATCH zero with
``flush``/``punch`` reached the volume the way a file would show it.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator

from .base import Capabilities, Extent
from .errors import Forbidden, InvalidRequest

_DATA, _ZERO, _HOLE = 0, 1, 2


class MemoryVolume:
    """A volume backed by a ``bytearray``.

    ``initial``: the size in bytes of a new all-hole volume (like a sparse
    file), or the initial contents (all data).  ``block_size`` and
    ``max_writers`` are only advertised in :attr:`capabilities`; any
    alignment works.  ``readonly`` makes ``write`` and ``zero`` raise
    :class:`~volume.errors.Forbidden`.  Writes past the end extend it, and a
    gap between the old end and the write becomes a hole, as in a file.
    """

    def __init__(self, initial: int | bytes = 0, *, block_size: int = 1,
                 max_writers: int = 8, readonly: bool = False) -> None:
        if isinstance(initial, int):
            self._data = bytearray(initial)
            kind = _HOLE
        else:
            self._data = bytearray(initial)
            kind = _DATA
        self._caps = Capabilities(block_size=block_size, max_readers=8,
                                  max_writers=max_writers, can_punch=True, real_extents=True)
        self._readonly = readonly
        self._lock = threading.Lock()
        # Run-length map of the kinds: run i covers [_starts[i], _starts[i+1])
        # (the last run ends at the size) and adjacent runs differ in kind.
        self._starts: list[int] = [0]
        self._kinds: list[int] = [kind]
        self.closed = False

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    @property
    def readonly(self) -> bool:
        return self._readonly

    def size(self) -> int:
        return len(self._data)

    def getvalue(self) -> bytes:
        """All the bytes of the volume (for test assertions)."""
        with self._lock:
            return bytes(self._data)

    def readinto(self, offset: int, buf: memoryview) -> int:
        with self._lock:
            chunk = self._data[offset : offset + len(buf)]
        buf[: len(chunk)] = chunk
        return len(chunk)

    def write(self, offset: int, buf: memoryview) -> None:
        self._check(offset, len(buf))
        with self._lock:
            self._grow(offset + len(buf))
            self._data[offset : offset + len(buf)] = buf
            self._mark(offset, offset + len(buf), _DATA)

    def zero(self, offset: int, length: int, punch: bool = False) -> None:
        self._check(offset, length)
        with self._lock:
            self._grow(offset + length)
            self._data[offset : offset + length] = bytes(length)
            self._mark(offset, offset + length, _HOLE if punch else _ZERO)

    def flush(self) -> None:
        """Nothing to make durable."""

    def extents(self) -> Iterator[Extent]:
        with self._lock:
            size = len(self._data)
            bounds = [*self._starts, size]
            found = [
                Extent(bounds[i], bounds[i + 1] - bounds[i], zero=kind != _DATA,
                       hole=kind == _HOLE)
                for i, kind in enumerate(self._kinds)
                if bounds[i + 1] > bounds[i]
            ]
        return iter(found)

    def close(self) -> None:
        self.closed = True

    def _check(self, offset: int, length: int) -> None:
        if self._readonly:
            raise Forbidden("the volume is open read-only")
        if offset < 0 or length < 0:
            raise InvalidRequest(f"invalid range offset={offset} length={length}")

    def _grow(self, end: int) -> None:
        size = len(self._data)
        if end > size:
            self._data.extend(bytes(end - size))
            self._mark(size, end, _HOLE)

    def _mark(self, start: int, end: int, kind: int) -> None:
        """Set the kind of ``[start, end)``, keeping the runs merged."""
        if start >= end:
            return
        # Kind that resumes at ``end``, read before the runs are cut.
        after = self._kinds[bisect.bisect_right(self._starts, end) - 1]
        lo = bisect.bisect_left(self._starts, start)
        hi = bisect.bisect_right(self._starts, end)
        self._starts[lo:hi] = [start, end]
        self._kinds[lo:hi] = [kind, after]
        self._normalize()

    def _normalize(self) -> None:
        # The starts are strictly increasing after _mark; merge equal neighbours.
        starts: list[int] = []
        kinds: list[int] = []
        for s, k in zip(self._starts, self._kinds, strict=True):
            if not kinds or kinds[-1] != k:
                starts.append(s)
                kinds.append(k)
        self._starts, self._kinds = starts, kinds
