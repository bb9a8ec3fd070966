"""An OVF_STORE tar planned for one front-to-back stream (sans-IO).

``tarplan.ovf_store_plan`` lays out every segment with its header bytes,
which suits range reads and tests but holds about 1 KiB a member.  A push
of a store streams the tar once, in order, so :class:`StoreTar` keeps only
what must be known before the first byte: ``info.json`` (it comes first and
carries the manifest of every entry) and the total length.  Each OVF's
header is made when the stream reaches it; the OVF bytes are fetched by the
driver.  The bytes are those of ``ovf_store_plan`` for the same input.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator, Mapping, Sequence
from itertools import chain

import xxhash

from .manifest import INFO_NAME, METADATA_NAME, build_metadata, build_store_info
from .tarheader import EOF_SIZE, padding
from .tarplan import Member, header, header_size

_ZEROS = bytes(512)
_FORMAT = tarfile.PAX_FORMAT


class StoreTar:
    """The tar of ``info.json``, the OVFs and ``metadata.json``.

    ``ovfs`` holds ``(entity_uuid, size, xxh3_128 hex digest)`` of every
    cached OVF, in tar order; it is kept, not copied (tuples or named
    tuples: about 250 bytes an OVF with their strings).  ``vm_status`` maps
    VM UUIDs to VMStatus ints.  Everything is checked here, as
    ``ovf_store_plan`` does: canonical UUIDs, positive sizes, hex digests,
    no UUID twice (``BadManifest``, a ``ValueError``).
    """

    __slots__ = ("info", "metadata", "mtime", "ovfs", "total_size")

    def __init__(self, last_updated: str, sd_uuid: str, ovfs: Sequence[tuple[str, int, str]],
                 vm_status: Mapping[str, int], mtime: int) -> None:
        self.ovfs = ovfs
        self.mtime = mtime
        self.metadata = build_metadata(vm_status)
        meta_entry = (METADATA_NAME, len(self.metadata),
                      xxhash.xxh3_128_hexdigest(self.metadata))
        entries = ((f"{uuid}.ovf", size, digest) for uuid, size, digest in ovfs)
        self.info = build_store_info(last_updated, [sd_uuid], chain(entries, [meta_entry]))
        total = self._size(INFO_NAME, len(self.info)) + EOF_SIZE
        total += sum(self._size(f"{uuid}.ovf", size) for uuid, size, _ in ovfs)
        total += self._size(METADATA_NAME, len(self.metadata))
        self.total_size = total

    def _size(self, name: str, size: int) -> int:
        return header_size(Member(name, size, self.mtime, None), _FORMAT) + size + padding(size)

    def _inline(self, name: str, data: bytes) -> Iterator[bytes]:
        yield header(Member(name, len(data), self.mtime, None), _FORMAT)
        yield data
        if pad := padding(len(data)):
            yield _ZEROS[:pad]

    def pieces(self) -> Iterator[bytes | int]:
        """The tar in order: bytes, or for an OVF's data its index in ``ovfs``.

        The driver puts the OVF of that digest there and must check it: its
        size and digest are in the headers and the manifest already.
        """
        yield from self._inline(INFO_NAME, self.info)
        mtime = self.mtime
        for i, (uuid, size, _digest) in enumerate(self.ovfs):
            yield header(Member(f"{uuid}.ovf", size, mtime, None), _FORMAT)
            yield i
            if pad := padding(size):
                yield _ZEROS[:pad]
        yield from self._inline(METADATA_NAME, self.metadata)
        yield bytes(EOF_SIZE)
