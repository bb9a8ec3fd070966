"""The on-device metadata of a block domain.

The first :data:`AREA` (1 MiB) of every device of a block domain is
reserved; volumes start after it, aligned to 1 MiB::

    0        LABEL   magic, generation 0, {"sd_uuid", "index"}: whose
                     device this is, and its place in the domain
    256 KiB  SLOT 0  on the first device only: the volume table
    512 KiB  SLOT 1  on the first device only: the volume table

A label or slot is one record: a fixed header (magic, format version,
generation, body length, xxh3-128 of all of these and the body), then a
JSON body, zero padded.  The table is updated by writing generation
``g + 1`` into the slot the newest table (``g``) is *not* in, then
fsyncing, so a torn write only ever damages the copy being written: a
reader takes the newest slot whose checksum verifies, which is the
previous table until the new one is complete.

All I/O here is ``O_DIRECT`` in 4 KiB units (the largest logical block
size), so a host never reads another host's change from a stale page
cache.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import xxhash

from .buffers import aligned_buffer
from .errors import NoSpace

KiB = 1 << 10
ALIGN = 4 * KiB
AREA = 1024 * KiB
LABEL_OFFSET = 0
LABEL_SIZE = 4 * KiB
SLOT_OFFSETS = (256 * KiB, 512 * KiB)
SLOT_SIZE = 256 * KiB

LABEL_MAGIC = b"SLUICEPV"
TABLE_MAGIC = b"SLUICEMD"
VERSION = 1

# magic, version, generation, body length; then the digest of all that + body.
_FIELDS = struct.Struct("<8sIQI")
_DIGEST = 16
HEADER_SIZE = _FIELDS.size + _DIGEST


def encode(magic: bytes, generation: int, body: dict[str, Any], size: int) -> bytes:
    """One record of exactly ``size`` bytes; NoSpace if the body does not fit."""
    data = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    if HEADER_SIZE + len(data) > size:
        raise NoSpace(f"the storage domain metadata area is full ({len(data)} bytes "
                      f"of {size - HEADER_SIZE})")
    fields = _FIELDS.pack(magic, VERSION, generation, len(data))
    digest = xxhash.xxh3_128(fields + data).digest()
    record = fields + digest + data
    return record + bytes(size - len(record))


def decode(magic: bytes, record: bytes) -> tuple[int, dict[str, Any]] | None:
    """(generation, body) of a record, or None if it is not a whole, valid one."""
    found, version, generation, length = _FIELDS.unpack_from(record)
    if found != magic or version != VERSION or HEADER_SIZE + length > len(record):
        return None
    fields = record[:_FIELDS.size]
    digest = record[_FIELDS.size:HEADER_SIZE]
    data = record[HEADER_SIZE:HEADER_SIZE + length]
    if xxhash.xxh3_128(fields + data).digest() != digest:
        return None
    try:
        body = json.loads(data)
    except ValueError:
        return None
    return (generation, body) if isinstance(body, dict) else None


def open_device(path: str, write: bool = False) -> int:
    flags = (os.O_RDWR if write else os.O_RDONLY) | os.O_DIRECT | os.O_CLOEXEC
    return os.open(path, flags)


@contextmanager
def device(path: str, write: bool = False) -> Iterator[int]:
    """:func:`open_device`, closed when the block ends."""
    fd = open_device(path, write)
    try:
        yield fd
    finally:
        os.close(fd)


def read_at(fd: int, offset: int, size: int) -> bytes:
    """Read ``size`` bytes (a multiple of :data:`ALIGN`) at ``offset``."""
    buf = aligned_buffer(size)
    try:
        with memoryview(buf) as view:
            got = 0
            while got < size:
                n = os.preadv(fd, [view[got:]], offset + got)
                if n == 0:
                    raise OSError(errno.EIO, "short read: the device is too small")
                got += n
            return bytes(view)
    finally:
        buf.close()


def write_at(fd: int, offset: int, data: bytes) -> None:
    """Write ``data`` (a multiple of :data:`ALIGN`) at ``offset`` and fsync."""
    buf = aligned_buffer(len(data))
    try:
        with memoryview(buf) as view:
            view[:] = data
            done = 0
            while done < len(data):
                done += os.pwritev(fd, [view[done:]], offset + done)
        os.fsync(fd)
    finally:
        buf.close()


def read_label(fd: int) -> dict[str, Any] | None:
    record = decode(LABEL_MAGIC, read_at(fd, LABEL_OFFSET, LABEL_SIZE))
    return None if record is None else record[1]


def write_label(fd: int, body: dict[str, Any]) -> None:
    write_at(fd, LABEL_OFFSET, encode(LABEL_MAGIC, 0, body, LABEL_SIZE))


def read_table(fd: int, sd_uuid: str) -> tuple[int, dict[str, Any]] | None:
    """The newest valid table of domain ``sd_uuid``: (generation, body)."""
    best = None
    for offset in SLOT_OFFSETS:
        record = decode(TABLE_MAGIC, read_at(fd, offset, SLOT_SIZE))
        if record is None or record[1].get("sd_uuid") != sd_uuid:
            continue
        if best is None or record[0] > best[0]:
            best = record
    return best


def slot_offset(generation: int) -> int:
    return SLOT_OFFSETS[generation % 2]


def write_table(fd: int, generation: int, body: dict[str, Any]) -> None:
    """Write table ``generation``: into the slot the previous one is not in."""
    write_at(fd, slot_offset(generation), encode(TABLE_MAGIC, generation, body, SLOT_SIZE))


def clear_slots(fd: int) -> None:
    """Zero both slots, so no table of a former domain outlives a format."""
    for offset in SLOT_OFFSETS:
        write_at(fd, offset, bytes(SLOT_SIZE))
