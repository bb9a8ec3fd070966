"""Plan a tar before sending its first byte (sans-IO).

A plan is the whole archive as a list of segments, each at a known offset:
the header bytes themselves, a range of a member's data (fetched by the
driver through the member's opaque ``source``), or zeros.  So the total
length is known up front (``Content-Length``), and any byte range can be
produced without producing what comes before it (resuming, ``Range``).

Headers come from ``tarfile.TarInfo.tobuf`` and their length is measured,
never assumed: a long or non-ASCII name or a size of 8 GiB or more gives a
PAX extended header (or a GNU long-name header) in front of the ustar one.
The archive ends with two zero blocks and is not padded to a 10240-byte
record, like the engine's commons-compress output (ovirt-storage.md §1.5).
"""

from __future__ import annotations

import bisect
import functools
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import xxhash

from .manifest import (
    INFO_NAME,
    METADATA_NAME,
    Manifest,
    ManifestEntry,
    build_info,
    build_metadata,
)
from .tarheader import BLOCK, EOF_SIZE, name_problem, padding

_Format = Literal[0, 1, 2]
_FORMATS = (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT)
#: render() asks ``fetch`` for at most this much at a time.
FETCH_SIZE = 1 << 20
#: ustar numbers: 11 octal digits and a NUL.
_OCTAL_MAX = 8**11
_ZERO_SIZE_SUM = sum(b"%011o\0" % 0)


@dataclass(frozen=True)
class Member:
    """A regular file of the archive.  ``source`` is opaque to the planner:
    drivers fetch the bytes by it (a path, a cache key, or the bytes)."""

    name: str
    size: int
    mtime: int
    source: Any


@dataclass(frozen=True)
class Header:
    offset: int
    data: bytes

    @property
    def length(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class Data:
    """Bytes ``[start, start + length)`` of ``member``."""

    offset: int
    member: Member
    start: int
    length: int

    def inline(self) -> bytes | None:
        """The bytes, when the member carries them as its source, else None."""
        src = self.member.source
        if isinstance(src, bytes):
            return src[self.start : self.start + self.length]
        return None


@dataclass(frozen=True)
class Padding:
    """Zeros: member padding to a block, and the end-of-archive blocks."""

    offset: int
    length: int


Segment = Header | Data | Padding


@dataclass(frozen=True)
class Plan:
    segments: tuple[Segment, ...]
    total_size: int
    _starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pos = 0
        for seg in self.segments:
            if seg.offset != pos or seg.length <= 0:
                raise ValueError(f"segment {seg!r} does not follow offset {pos}")
            pos += seg.length
        if pos != self.total_size:
            raise ValueError(f"segments end at {pos}, not at total_size {self.total_size}")
        object.__setattr__(self, "_starts", tuple(s.offset for s in self.segments))

    def segments_for_range(self, start: int, end: int) -> Iterator[Segment]:
        """The segments covering ``[start, end)``, the first and last clipped."""
        if not 0 <= start <= end <= self.total_size:
            raise ValueError(f"range [{start}, {end}) outside [0, {self.total_size})")
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        while start < end:
            seg = self.segments[i]
            yield _clip(seg, start, min(end, seg.offset + seg.length))
            start = seg.offset + seg.length
            i += 1


def _clip(seg: Segment, start: int, end: int) -> Segment:
    if start == seg.offset and end == seg.offset + seg.length:
        return seg
    skip, length = start - seg.offset, end - start
    if isinstance(seg, Header):
        return Header(start, seg.data[skip : skip + length])
    if isinstance(seg, Data):
        return Data(start, seg.member, seg.start + skip, length)
    return Padding(start, length)


def _info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.type = tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _is_simple(name: str, size: int, mtime: int) -> bool:
    """Whether one 512-byte ustar block says it all, in every format: an
    ASCII name that fits the 100-byte field, size and mtime in 11 octal digits."""
    return len(name) <= 100 and name.isascii() and 0 <= size < _OCTAL_MAX \
        and 0 <= mtime < _OCTAL_MAX


@functools.lru_cache(maxsize=8)
def _template(format: int, mtime: int) -> tuple[bytes, int]:
    """The block of an empty member called "" dated ``mtime``, and its byte
    sum with the checksum field as spaces (how the checksum is computed)."""
    block = _info("", 0, mtime).tobuf(format=cast(_Format, format), encoding="utf-8",
                                      errors="strict")
    block = block[:148] + b" " * 8 + block[156:]
    return block, sum(block)


def _simple_header(name: str, size: int, mtime: int, format: int) -> bytes:
    """``tobuf``'s bytes for a simple member (see ``_is_simple``), made by
    patching a template: tarfile takes about 80 us a header, this 3 us."""
    template, base = _template(format, mtime)
    block = bytearray(template)
    encoded = name.encode("ascii")
    block[: len(encoded)] = encoded
    size_field = b"%011o\0" % size
    block[124:136] = size_field
    checksum = base + sum(encoded) + sum(size_field) - _ZERO_SIZE_SUM
    block[148:155] = b"%06o\0" % checksum
    return bytes(block)


def header(member: Member, format: int = tarfile.PAX_FORMAT) -> bytes:
    """The header bytes of ``member``: 512, or more with PAX or GNU long names."""
    if format not in _FORMATS:
        raise ValueError(f"unknown tar format {format!r}")
    if _is_simple(member.name, member.size, member.mtime):
        return _simple_header(member.name, member.size, member.mtime, format)
    info = _info(member.name, member.size, member.mtime)
    try:
        return info.tobuf(format=cast(_Format, format), encoding="utf-8", errors="strict")
    except ValueError as e:  # e.g. a ustar name or size that does not fit
        raise ValueError(f"member {member.name!r}: {e}") from None


def header_size(member: Member, format: int = tarfile.PAX_FORMAT) -> int:
    """``len(header(member, format))``, without making it for simple members."""
    if format in _FORMATS and _is_simple(member.name, member.size, member.mtime):
        return BLOCK
    return len(header(member, format))


def plan(members: Sequence[Member], format: int = tarfile.PAX_FORMAT) -> Plan:
    """Plan an archive of regular files with flat, unique names, in order.

    ``format`` is a ``tarfile`` format: PAX (the default, POSIX.1-2001: long
    and non-ASCII names, any size), GNU (long-name headers, base-256 sizes)
    or USTAR (refuses names over 100 bytes and sizes of 8 GiB or more).
    """
    segments: list[Segment] = []
    names: set[str] = set()
    pos = 0
    for m in members:
        problem = name_problem(m.name)
        if problem is not None:
            raise ValueError(f"member {m.name!r}: {problem}")
        if m.name in names:
            raise ValueError(f"member {m.name!r} given twice")
        if m.size < 0:
            raise ValueError(f"member {m.name!r}: negative size {m.size}")
        names.add(m.name)
        hdr = header(m, format)
        segments.append(Header(pos, hdr))
        pos += len(hdr)
        if m.size:
            segments.append(Data(pos, m, 0, m.size))
            pos += m.size
        if pad := padding(m.size):
            segments.append(Padding(pos, pad))
            pos += pad
    segments.append(Padding(pos, EOF_SIZE))
    return Plan(tuple(segments), pos + EOF_SIZE)


def ovf_store_plan(
    last_updated: str,
    sd_uuid: str,
    ovfs: Sequence[tuple[str, int, str, Any]],
    vm_status: Mapping[str, int],
    mtime: int,
) -> tuple[Plan, bytes, bytes, Manifest]:
    """Plan an OVF_STORE tar: ``info.json``, the OVFs, ``metadata.json``.

    ``ovfs`` holds ``(entity_uuid, size, xxh3_128 hex digest, source)`` of
    every cached OVF to store; ``vm_status`` maps VM UUIDs to VMStatus ints.
    The manifest in ``info.json`` lists the OVFs and ``metadata.json``.
    Returns the plan, the bytes of ``info.json`` and ``metadata.json``
    (their members carry them as ``source``) and the manifest.
    """
    metadata = build_metadata(vm_status)
    entries = [ManifestEntry(f"{uuid}.ovf", size, digest) for uuid, size, digest, _ in ovfs]
    entries.append(ManifestEntry(METADATA_NAME, len(metadata),
                                 xxhash.xxh3_128_hexdigest(metadata)))
    manifest = Manifest(tuple(entries))
    info = build_info(last_updated, [sd_uuid], manifest)
    members = [Member(INFO_NAME, len(info), mtime, info)]
    members += [Member(f"{uuid}.ovf", size, mtime, src) for uuid, size, _, src in ovfs]
    members.append(Member(METADATA_NAME, len(metadata), mtime, metadata))
    return plan(members), info, metadata, manifest


def render(
    plan: Plan,
    fetch: Callable[[Member, int, int], bytes],
    start: int = 0,
    end: int | None = None,
) -> Iterator[bytes]:
    """Produce bytes ``[start, end)`` of the archive (all by default).

    ``fetch(member, offset, length)`` returns member data; it is not called
    for members whose source is their bytes.  A short or long answer raises
    ``ValueError``: the headers already promised that length.
    """
    for seg in plan.segments_for_range(start, plan.total_size if end is None else end):
        if isinstance(seg, Header):
            yield seg.data
        elif isinstance(seg, Padding):
            yield bytes(seg.length)  # at most 1024: the end-of-archive blocks
        else:
            inline = seg.inline()
            for done in range(0, seg.length, FETCH_SIZE):
                n = min(FETCH_SIZE, seg.length - done)
                if inline is None:
                    chunk = fetch(seg.member, seg.start + done, n)
                else:
                    chunk = inline[done : done + n]
                if len(chunk) != n:
                    raise ValueError(f"member {seg.member.name!r}: data at "
                                     f"{seg.start + done} is {len(chunk)} of {n} bytes")
                yield chunk
