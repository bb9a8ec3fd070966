"""The commit record at the end of an OVF_STORE volume.

A store's bytes start with a plain tar archive (so oVirt's
``dd if=STORE | tar -xOf - <uuid>.ovf`` keeps working) and its last
:data:`RECORD_SIZE` bytes hold the record that says whether that tar is
whole.  The record is one aligned 4 KiB block, written with one direct
write, little-endian::

    offset size  field
     0      8    magic b"SLUICEOV"
     8      4    format version (u32), 1
    12      4    flags (u32): bit 0 = updating (the store is invalid)
    16      8    generation (u64)
    24      8    tar length in bytes (u64)
    32     16    xxh3-128 of the tar (canonical big-endian bytes, as hexdigest)
    48      8    commit time (u64 nanoseconds since the epoch)
    56     16    xxh3-128 of bytes 0-55: a torn or bit-flipped record fails it
    72   4024    zero

The record sits at ``size - size % 4096 - 4096`` of a volume of ``size``
bytes (4 KiB aligned, the largest logical block size), so it is an
aligned direct write on files and on devices of either sector size.

An "updating" record (flag set) names the generation being written, with
length 0, a zero digest and the time the update began.  An all-zero area
is a store that was never updated; anything else that does not verify is
reported as such and never trusted.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import xxhash

from .base import Volume
from .buffers import aligned_buffer
from .errors import InvalidRequest, VolumeError

RECORD_SIZE = 4096
#: Unit of hashing and copying archives: large enough for full-speed
#: direct I/O, small next to the daemon's 32 MiB budget for OVF streams.
CHUNK = 4 << 20
MAGIC = b"SLUICEOV"
VERSION = 1
UPDATING = 1 << 0

_FIELDS = struct.Struct("<8sIIQQ16sQ")
_CHECKSUM = 16
_DIGEST = re.compile(r"[0-9a-f]{32}")
#: The digest an "updating" record carries: no tar is described yet.
NO_DIGEST = "0" * 32


@dataclass(frozen=True)
class CommitRecord:
    generation: int
    tar_length: int
    #: xxh3-128 hex digest of the tar bytes ``[0, tar_length)``.
    digest: str
    #: Epoch seconds: when the tar was committed, or, for an updating
    #: record, when the update began.
    committed_at: float
    #: True: an update was started and not committed; the store is invalid.
    updating: bool

    def to_json(self) -> dict[str, Any]:
        return {"generation": self.generation, "tar_length": self.tar_length,
                "digest": self.digest, "committed_at": self.committed_at,
                "updating": self.updating}


def check_digest(digest: object) -> str:
    """A tar digest in canonical form (32 lower-case hex digits), or InvalidRequest."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest.lower()):
        raise InvalidRequest(f"malformed xxh3_128 digest {digest!r}: expected 32 hex digits")
    return digest.lower()


def record_offset(size: int) -> int:
    """Where the record of a store of ``size`` bytes starts; also the store's
    tar capacity."""
    return size - size % RECORD_SIZE - RECORD_SIZE


def encode(record: CommitRecord) -> bytes:
    fields = _FIELDS.pack(
        MAGIC, VERSION, UPDATING if record.updating else 0, record.generation,
        record.tar_length, bytes.fromhex(record.digest), round(record.committed_at * 1e9),
    )
    data = fields + xxhash.xxh3_128(fields).digest()
    return data + bytes(RECORD_SIZE - len(data))


def decode(data: bytes) -> tuple[CommitRecord | None, str | None]:
    """(record, None) for a record that verifies, else (None, why not)."""
    if not any(data):
        return None, "never updated"
    magic, version, flags, generation, length, digest, ns = _FIELDS.unpack_from(data)
    if magic != MAGIC:
        return None, "no commit record (unknown bytes)"
    if xxhash.xxh3_128(data[:_FIELDS.size]).digest() != data[_FIELDS.size:][:_CHECKSUM]:
        return None, "torn or corrupt commit record"
    if version != VERSION:
        return None, f"unsupported commit record version {version}"
    record = CommitRecord(generation, length, digest.hex(), ns / 1e9, bool(flags & UPDATING))
    return record, None


@contextmanager
def aligned_view(size: int) -> Iterator[memoryview]:
    """A page-aligned buffer for direct I/O, unmapped on exit (or, while
    the traceback of an error raised through here still holds a slice of
    it, with that last reference: closing would replace the error)."""
    buf = aligned_buffer(size)
    try:
        with memoryview(buf) as view:
            yield view
    finally:
        with suppress(BufferError):
            buf.close()


def read(vol: Volume, size: int) -> tuple[CommitRecord | None, str | None]:
    """The record of the store ``vol`` of ``size`` bytes; see :func:`decode`."""
    with aligned_view(RECORD_SIZE) as view:
        if vol.readinto(record_offset(size), view) < RECORD_SIZE:
            return None, f"the store is shorter than its size of {size} bytes"
        return decode(bytes(view))


def write(vol: Volume, size: int, record: CommitRecord) -> CommitRecord:
    """Write ``record`` into the store ``vol`` of ``size`` bytes, then sync.

    Returns the record as a reader will decode it (the time goes through
    nanoseconds), so callers compare like with like.
    """
    data = encode(record)
    with aligned_view(RECORD_SIZE) as view:
        view[:] = data
        vol.write(record_offset(size), view)
    vol.flush()
    found, error = decode(data)
    if found is None:  # cannot happen: encode and decode are one format
        raise VolumeError(f"commit record does not round-trip: {error}")
    return found


def chunks(vol: Volume, length: int, buf: memoryview) -> Iterator[memoryview]:
    """``[0, length)`` of ``vol``, read into ``buf`` a chunk at a time."""
    pos = 0
    while pos < length:
        n = vol.readinto(pos, buf[:min(len(buf), length - pos)])
        if n == 0:
            raise VolumeError("the OVF store ends inside its archive")
        yield buf[:n]
        pos += n


def tar_digest(vol: Volume, length: int, buf: memoryview,
               observe: Callable[[memoryview], None] | None = None) -> str:
    """The xxh3-128 hex digest of ``[0, length)`` of ``vol``, read through
    ``buf``; ``observe`` sees each chunk too, in order."""
    h = xxhash.xxh3_128()
    for chunk in chunks(vol, length, buf):
        h.update(chunk)
        if observe is not None:
            observe(chunk)
    return h.hexdigest()
