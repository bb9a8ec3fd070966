"""What a qcow2 volume's header asks qemu to open besides the image.

A qcow2 volume's bytes, header included, come from whoever holds its write
ticket.  qemu opens what the header names: a backing file (any path, or a
``json:`` or ``nbd:`` spec) that it reads the guest's unallocated clusters
from, and an external data file that it reads and writes the guest's data
in.  A volume whose header named ``<data-dir>/engine.token`` as its backing
file became, once converted to raw, a disk holding the token; one naming
a host file as its data file had that file written by a copy and grown by
a resize.

So before ``qemu-img`` opens a volume, :func:`check_fd` reads its header and
refuses it unless the only other file it names is its parent volume, by
the name the domain gave it (the parent's UUID, a sibling file).  The
qcow2 layout is docs/interop/qcow2.txt of QEMU: a big-endian header, then
(version 3) header extensions up to the end of the first cluster.
"""

from __future__ import annotations

import os
import struct

from .errors import InvalidRequest

MAGIC = b"QFI\xfb"
#: Incompatible feature bit 2: the guest data lives in an external file.
INCOMPAT_DATA_FILE = 1 << 2
#: Header extension types: the end of the list, the external data file's name.
EXT_END = 0
EXT_DATA_FILE = 0x44415441
#: Version 2 headers are 72 bytes; version 3 give their length at byte 100.
V2_HEADER = 72
#: QEMU's bounds on cluster_bits (512 B to 2 MiB clusters).
MIN_CLUSTER_BITS, MAX_CLUSTER_BITS = 9, 21


class UnsafeImage(InvalidRequest):
    """A qcow2 header names a file qemu must not open (or is no qcow2 header)."""

    http_status = 422
    code = "unsafe-image"


def check_fd(fd: int, name: str, parent: str | None) -> None:
    """Raise UnsafeImage unless the qcow2 image open as ``fd`` (volume
    ``name``) names no backing file (``parent`` None) or exactly ``parent``,
    and no external data file.  Check the descriptor qemu-img will be given
    (``/proc/self/fd/N``): a name could lead elsewhere by then."""
    head = os.pread(fd, 104, 0)
    bits = struct.unpack_from(">I", head, 20)[0] if len(head) >= 24 else 0
    cluster = os.pread(fd, 1 << bits, 0) if MIN_CLUSTER_BITS <= bits <= MAX_CLUSTER_BITS \
        else head
    problem = header_problem(cluster, parent)
    if problem:
        raise UnsafeImage(f"volume {name} is refused: {problem}")


def header_problem(cluster: bytes, parent: str | None) -> str | None:
    """Why the first cluster ``cluster`` of a qcow2 image is unsafe, or None."""
    if len(cluster) < V2_HEADER or cluster[:4] != MAGIC:
        return "it does not start with a qcow2 header"
    version, backing_offset, backing_size, bits = struct.unpack_from(">IQII", cluster, 4)
    if version not in (2, 3):
        return f"qcow2 version {version} is not 2 or 3"
    if not MIN_CLUSTER_BITS <= bits <= MAX_CLUSTER_BITS or len(cluster) < 1 << bits:
        return "its qcow2 header has an invalid cluster size or is cut short"
    backing = cluster[backing_offset:backing_offset + backing_size] if backing_offset else b""
    if backing_offset and (backing_offset + backing_size > len(cluster) or not backing):
        return "its backing file name lies outside the first cluster"
    if parent is None and backing_offset:
        return f"it names a backing file ({_show(backing)}) but the volume has no parent"
    if parent is not None and backing != parent.encode():
        return f"its backing file is {_show(backing)}, not its parent volume {parent}"
    pos = V2_HEADER  # where the header extensions start
    if version == 3:
        if len(cluster) < 104:
            return "its qcow2 version 3 header is cut short"
        if struct.unpack_from(">Q", cluster, 72)[0] & INCOMPAT_DATA_FILE:
            return "it keeps its data in an external data file"
        pos = struct.unpack_from(">I", cluster, 100)[0]
    while pos + 8 <= len(cluster):
        kind, length = struct.unpack_from(">II", cluster, pos)
        if kind == EXT_END:
            return None
        if kind == EXT_DATA_FILE:
            return "it names an external data file"
        pos += 8 + length + (-length % 8)
    return "its header extensions do not end within the first cluster"


def _show(name: bytes) -> str:
    return repr(name.decode(errors="replace")[:200])
