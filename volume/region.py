"""A bounded window onto another volume: one volume of a block domain.

A block domain keeps each volume in a region ``[offset, offset+length)`` of
one device.  :class:`RegionVolume` makes that region a volume of its own:
offsets are shifted, nothing outside the region can be read or written,
and its size is the region's length, so a ticket for one volume can never
reach its neighbours on the device.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator

from .base import Capabilities, Extent, Volume
from .errors import InvalidRequest, OutOfRange

log = logging.getLogger(__name__)


class RegionVolume:
    """``[offset, offset+length)`` of ``inner`` as a volume of ``length`` bytes.

    Owns ``inner``: closing the region closes it.
    """

    def __init__(self, inner: Volume, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > inner.size():
            raise InvalidRequest(
                f"region offset={offset} length={length} does not fit in a volume "
                f"of {inner.size()} bytes"
            )
        self._inner = inner
        self._offset = offset
        self._length = length
        # The inner extents describe the whole device, not this region, so
        # report one data extent, as a block device without extents would.
        self._caps = dataclasses.replace(inner.capabilities, real_extents=False)
        log.debug("open region offset=%d length=%d", offset, length)

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    @property
    def readonly(self) -> bool:
        return self._inner.readonly

    def size(self) -> int:
        return self._length

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0:
            raise InvalidRequest(f"invalid range offset={offset} length={length}")
        if offset + length > self._length:
            raise OutOfRange(
                f"range offset={offset} length={length} is outside the volume "
                f"of {self._length} bytes",
                self._length,
            )

    def readinto(self, offset: int, buf: memoryview) -> int:
        self._check(offset, 0)
        n = min(len(buf), self._length - offset)
        if n == 0:
            return 0
        return self._inner.readinto(self._offset + offset, buf[:n])

    def write(self, offset: int, buf: memoryview) -> None:
        self._check(offset, len(buf))
        self._inner.write(self._offset + offset, buf)

    def zero(self, offset: int, length: int, punch: bool = False) -> None:
        self._check(offset, length)
        self._inner.zero(self._offset + offset, length, punch)

    def flush(self) -> None:
        self._inner.flush()

    def extents(self) -> Iterator[Extent]:
        if self._length:
            yield Extent(0, self._length, zero=False, hole=False)

    def close(self) -> None:
        self._inner.close()
