"""What the tar stream reader holds of a member: :class:`Entry`, the
member as it reports it, and :class:`Body`, the data being read."""

from __future__ import annotations

from typing import NamedTuple

import xxhash

from .tarheader import REGULAR

_ZEROS = bytes(64 << 10)


class Entry(NamedTuple):
    """A member: its name, the offset of its data in the tar, size and xxh3-128.
    (A named tuple: a store has tens of thousands, made in a hot loop.)"""

    name: str
    offset: int
    size: int
    digest: str


class Body:
    """Data being read: of an entry (hashed), or of a PAX/long-name header."""

    __slots__ = ("buf", "hash", "kind", "name", "offset", "size")

    def __init__(self, kind: bytes, name: str, offset: int, size: int, keep: bool) -> None:
        self.kind, self.name, self.offset, self.size = kind, name, offset, size
        self.hash = xxhash.xxh3_128() if kind in REGULAR else None
        self.buf = bytearray() if keep else None

    @property
    def label(self) -> str:
        return repr(self.name) if self.hash is not None else self.name


def is_zero(view: memoryview) -> bool:
    # A 64 KiB copy then memcmp is ~30 times faster than comparing memoryviews,
    # which unpacks item by item (128 MiB of zeros: 6 ms against 180 ms).
    for i in range(0, len(view), len(_ZEROS)):
        piece = bytes(view[i : i + len(_ZEROS)])
        if piece != (_ZEROS if len(piece) == len(_ZEROS) else _ZEROS[: len(piece)]):
            return False
    return True
