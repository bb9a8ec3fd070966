"""Validate an OVF_STORE tar as it streams (sans-IO).

Feed the upload body in chunks of any size; the first violation raises
:class:`BadTar` naming the entry, and :meth:`OvfTarReader.finish` says
whether the whole stream was a valid, complete store.  The tar itself
(headers, PAX, padding, end blocks, constant memory) is checked by
:class:`~stream.wire.tarstream.TarStream`; this module adds the layout.

The layout is oVirt's (ovirt-storage.md §1.5): ``info.json`` first, then
``<uuid>.ovf`` entries, then ``metadata.json``, then more ``<uuid>.ovf``
(entities the engine holds as unregistered).  Nothing else: canonical
lower-case UUIDs, no empty entries, ``metadata.json`` optional (its VM
statuses are then empty).  When ``info.json`` carries a manifest, the
entries after it must be exactly the listed ones (in any order) with the
listed sizes and xxh3-128 digests: a name or size is refused at its
header, a digest at the end of its data, a missing entry at
:meth:`~OvfTarReader.finish`.  Without one (an unchanged oVirt engine)
only the structure is checked.

Every refusal is a :class:`BadTar`, 422 (see there).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Any

import xxhash

from .errors import BadTar
from .manifest import (
    INFO_NAME,
    METADATA_NAME,
    Manifest,
    ManifestEntry,
    is_ovf_name,
    parse_info,
    parse_metadata,
)
from .strictjson import value_bound
from .tarbody import Entry
from .tarheader import BLOCK, EOF_SIZE, ZERO_BLOCK
from .tarstream import TarStream

__all__ = ["BadTar", "Entry", "OvfTarReader", "Summary", "index"]

KiB = 1 << 10
MiB = 1 << 20
_JSON_NAMES = (INFO_NAME, METADATA_NAME)
#: What info.json and metadata.json need for a store of ``max_entries``
#: entries; both are kept and parsed (on the daemon's event loop), and 16 MiB
#: of ``{},`` took 300 MiB and seconds.  Bytes: ``build_store_info`` writes
#: 156 a manifest entry (a name of 41, a digest of 32, a size of 8 digits,
#: keys and indents), the engine about 48 a VM status; 64 KiB more for
#: oVirt's keys and the domains.  Values (``strictjson.value_bound``): 4 a
#: manifest entry (its object, a comma before each other value and before
#: the next entry), 1 a VM status.  A legitimate 100,000 entries take 82 MiB
#: and a fraction of a second to parse; what these bounds let through, no more.
_JSON_BYTES_PER_ENTRY, _JSON_BYTES_BESIDES = 160, 64 * KiB
_JSON_VALUES_PER_ENTRY, _JSON_VALUES_BESIDES = 4, 1024
#: The usual header of an OVF: the name field exactly a canonical
#: ``<uuid>.ovf``, mode, uid, gid, size and mtime in octal digits, the
#: checksum 6 and NUL space, a regular file, ustar magic, devmajor, devminor
#: and prefix NULs (as tarfile and GNU tar write them).  Any other header
#: goes through tarheader.parse_header, which accepts all these too.
_OVF_HEADER = re.compile(
    rb"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.ovf)\0"
    rb".{59}[0-7]{7}[\0 ][0-7]{7}[\0 ][0-7]{7}[\0 ]([0-7]{11})[\0 ][0-7]{11}[\0 ]"
    rb"([0-7]{6})\0 [0\0].{100}(?:ustar\x0000|ustar  \x00).{64}\0{17}", re.DOTALL)
_ZEROS = memoryview(ZERO_BLOCK)


@dataclass(frozen=True)
class Summary:
    #: Every entry, in tar order, ``info.json`` and ``metadata.json`` included.
    entries: tuple[Entry, ...]
    #: Bytes up to and including the two end-of-archive blocks.
    tar_length: int
    #: xxh3-128 of those ``tar_length`` bytes.
    digest: str
    #: ``info.json`` as parsed (the manifest included, as JSON).
    info: dict[str, Any]
    manifest: Manifest | None
    #: ``metadata.json``'s ``"VM Status"``, empty without it.
    vm_status: dict[str, int]


class OvfTarReader(TarStream):
    """Validate one OVF_STORE tar fed in chunks.

    ``max_total``: the store's size; the stream may not be longer, and an
    entry that cannot fit (with its padding and the end blocks) is refused
    at its header.  ``max_entries`` bounds the member count (a tar bomb of
    empty entries is refused at its first entry anyway, empty entries being
    invalid), ``max_entry_size`` each OVF, ``max_pax`` each PAX or GNU
    long-name body, ``max_meta`` ``info.json`` and ``metadata.json`` (kept
    in memory to be parsed; no more than ``max_entries`` entries need).
    ``ignore_trailing``: bytes after the end blocks are not looked at
    (reading a store volume, whose tail may hold an older tar); otherwise
    they must be zeros.  ``require_manifest``: ``info.json`` must carry a
    manifest (a Sluice sender says it sent one).  ``entries_only``: the JSON
    entries are neither kept nor parsed, so no manifest is checked (the
    summary's info, manifest and statuses are empty): counting the entries
    of a stored archive, which its record verifies already, costs no parse.
    """

    def __init__(
        self,
        *,
        max_total: int,
        max_entries: int = 100_000,
        max_entry_size: int = 64 * MiB,
        max_pax: int = 64 * KiB,
        max_meta: int = 16 * MiB,
        ignore_trailing: bool = False,
        require_manifest: bool = False,
        entries_only: bool = False,
        committed: bool = False,
    ) -> None:
        super().__init__(max_total=max_total, max_entries=max_entries, max_pax=max_pax,
                         ignore_trailing=ignore_trailing, committed=committed)
        self._require_manifest = require_manifest
        self._entries_only = entries_only
        self._max_entry_size = max_entry_size
        self._max_meta = min(max_meta, _JSON_BYTES_PER_ENTRY * max_entries
                             + _JSON_BYTES_BESIDES)
        self._max_values = _JSON_VALUES_PER_ENTRY * max_entries + _JSON_VALUES_BESIDES
        self._info: dict[str, Any] = {}
        self._manifest: Manifest | None = None
        self._expected: dict[str, ManifestEntry] | None = None
        self._vm_status: dict[str, int] = {}

    @property
    def parsing(self) -> bool:
        """Whether what is fed next may end in a JSON parse of up to the
        ``max_meta`` bytes: until ``info.json`` is parsed, and while a JSON
        entry is collected (a caller may feed that part off its event loop)."""
        if self._entries_only:
            return False
        return not self.entries or (self._body is not None and self._body.buf is not None)

    def finish(self) -> Summary:
        """The summary of a valid, complete store; raises BadTar otherwise."""
        tar_length, digest = self.check_complete()
        if not self.entries:
            self._fail(f"an empty archive: no {INFO_NAME}")
        if self._expected is not None:
            missing = [n for n in self._expected if n not in self.names]
            if missing:
                self._fail(f"{len(missing)} entries of the manifest are missing from the "
                           f"tar, the first {missing[0]!r}")
        return Summary(tuple(self.entries), tar_length, digest, self._info, self._manifest,
                       self._vm_status)

    def _admit(self, name: str, size: int) -> bool:
        if not self.names and name != INFO_NAME:
            raise ValueError(f"the first entry must be {INFO_NAME}")
        if name not in _JSON_NAMES and not is_ovf_name(name):
            raise ValueError(f"unknown name: only {INFO_NAME}, <uuid>.ovf (canonical, "
                             f"lower-case) and {METADATA_NAME} are allowed")
        limit = self._max_meta if name in _JSON_NAMES else self._max_entry_size
        if size > limit:
            raise ValueError(f"{size} bytes exceed the limit of {limit}")
        if size == 0:
            raise ValueError("empty entry")
        if self._expected is not None:
            listed = self._expected.get(name)
            if listed is None:
                raise ValueError("not listed in the manifest")
            if listed.size != size:
                raise ValueError(f"{size} bytes, the manifest says {listed.size}")
        return name in _JSON_NAMES and not self._entries_only

    def _entry_done(self, entry: Entry, data: bytes) -> None:
        if self._expected is not None:
            listed = self._expected[entry.name]
            if listed.digest != entry.digest:
                raise ValueError(f"digest {entry.digest}, the manifest says {listed.digest}")
        if self._entries_only:
            return
        if entry.name in _JSON_NAMES and (n := value_bound(data)) > self._max_values:
            raise ValueError(f"up to {n} JSON values, more than the {self._max_values} "
                             f"that {self._max_entries} entries need")
        if entry.name == INFO_NAME:
            self._info, self._manifest = parse_info(data)
            if self._manifest is None and self._require_manifest:
                # One damaged byte in its key would otherwise turn every
                # digest check off: the sender says it sent a manifest.
                raise ValueError("no Manifest, and the sender requires one")
            if self._manifest is not None:
                self._expected = self._manifest.by_name()
        elif entry.name == METADATA_NAME:
            self._vm_status = parse_metadata(data)


    def _whole_entries(self, view: memoryview, pos: int) -> int:
        """The OVFs after ``info.json``, read whole from ``view`` in one loop:
        the bulk of a store, so its checks are done inline here (the header's
        checksum and fields, a flat ``<uuid>.ovf`` name, new, within the
        entry limit, not empty, fitting, zero padding; with a manifest,
        listed with this size and digest).  Anything else, or anything
        wrong, is left to the general steps, which report it."""
        expected = self._expected
        if not self.names or self._pax is not None or self._longname is not None:
            return pos  # info.json comes first, and through the steps
        names, entries = self.names, self.entries
        match, digest_of, adler32 = _OVF_HEADER.match, xxhash.xxh3_128_hexdigest, zlib.adler32
        new_entry = tuple.__new__  # Entry(...) without its Python-level __new__
        end_of_view = len(view)
        offset, room = self._offset, self._max_total - EOF_SIZE
        max_entries, max_size = self._max_entries, self._max_entry_size
        while end_of_view - pos >= BLOCK:
            m = match(view, pos)
            if m is None:
                break
            raw_name, raw_size, raw_sum = m.groups()
            name = raw_name.decode("ascii")
            listed = None if expected is None else expected.get(name)
            if (listed is None and expected is not None) or name in names \
                    or len(names) >= max_entries:
                break
            # The checksum field counts as 8 spaces; it holds the digits, NUL,
            # space.  The block's byte sum from Adler-32, whose low half is 1 +
            # the byte sum modulo 65521: a 256-byte half sums to at most
            # 65280, so each half's is exact, at a sixth of the cost of sum().
            if int(raw_sum, 8) + sum(raw_sum) != (adler32(view[pos:pos + 256]) & 0xFFFF) \
                    + (adler32(view[pos + 256:pos + BLOCK]) & 0xFFFF) - 2 + 7 * 0x20:
                break  # or the signed sum of old writers: the steps tell
            size = int(raw_size, 8)
            data = pos + BLOCK
            end = data + size
            pad = -size % BLOCK
            if not 0 < size <= max_size or (listed is not None and size != listed.size) \
                    or end + pad > end_of_view \
                    or view[end:end + pad] != _ZEROS[:pad] \
                    or offset + BLOCK + size + pad > room:
                break
            digest = digest_of(view[data:end])
            if listed is not None and digest != listed.digest:
                break
            names.add(name)
            entries.append(new_entry(Entry, (name, offset + BLOCK, size, digest)))
            offset += BLOCK + size + pad
            pos = end + pad
        if offset != self._offset:
            self._offset, self._last = offset, repr(entries[-1].name)
        return pos



def index(data: bytes | bytearray | memoryview) -> list[Entry]:
    """The entries of a complete store in memory, validated like an upload.

    ``data`` may go on past the tar (a store volume keeps what an older,
    longer tar left there); those bytes are not looked at.  Serve one OVF
    as ``data[e.offset : e.offset + e.size]``.
    """
    reader = OvfTarReader(max_total=len(data), ignore_trailing=True, committed=True)
    reader.feed(data)
    return list(reader.finish().entries)
