"""glibc's malloc, set for a daemon that receives bodies piece by piece.

Every piece of a request body that the event loop receives is a new
``bytes`` of up to a few hundred KiB, copied into a staging buffer and
freed.  With glibc's own settings the top of the main heap is given back
to the system (``brk`` down) whenever more than its trim threshold there is
free, and taken again for the next pieces (``brk`` up), each new page
faulted in and zeroed by the kernel: measured on a 512 MiB image PUT,
1,150 ``brk`` calls moving 280 MiB each way, about 60,000 page faults and
0.30 s of daemon CPU; with the thresholds below, no ``brk`` after the
first PUT, under 20 faults, and 0.16 s.  On this VM kind fresh pages cost
even more (the hypervisor reclaims freed memory, see bench/README.md).

glibc raises both thresholds itself as it sees large blocks freed, up to
32 MiB; setting them disables that, so they are set to what it would reach
for these pieces, with room: blocks under ``MMAP_THRESHOLD`` come from the
heap, and up to ``TRIM_THRESHOLD`` of free memory stays at its top.  That
is the most a daemon keeps in hand beyond what it uses, a few MiB.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

MiB = 1 << 20

#: mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Blocks at least this large are mapped on their own (and unmapped when
#: freed).  Larger than any piece the loop receives (uvloop reads at most
#: 256 KiB at a time) and than the JSON entries of an OVF store that
#: are kept whole (a few MiB); the 16 MiB staging buffers are mapped apart
#: anyway (volume.buffers).
MMAP_THRESHOLD = 4 * MiB
#: Free memory at the top of the heap kept rather than given back: twice
#: the above, glibc's own ratio.
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


def glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError):
        return False


def tune() -> bool:
    """Set the thresholds for this process; False where the C library is
    not glibc (or refuses), which leaves its own."""
    if not glibc():
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    log.debug("malloc thresholds: mmap %d, trim %d: %s", MMAP_THRESHOLD, TRIM_THRESHOLD,
              "set" if done else "refused")
    return done
