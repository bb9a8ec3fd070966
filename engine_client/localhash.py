"""Block-hash checksum of a local image file, equal to the daemon's.

Holes are found with SEEK_DATA/SEEK_HOLE and hashed without reading, so a
sparse image costs about the time of its data.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from stream.wire.blkhash import DEFAULT_ALGORITHM, DEFAULT_BLOCK_SIZE, BlockHash


def _data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    ranges = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # only a hole up to the end
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            ranges.append((start, min(end, size)))
            pos = end
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
        return [(0, size)]
    return ranges


def checksum(
    path: str, algorithm: str = DEFAULT_ALGORITHM, block_size: int = DEFAULT_BLOCK_SIZE
) -> dict[str, Any]:
    h = BlockHash(algorithm, block_size)
    zero = bytes(block_size)
    buf = bytearray(block_size)
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        data = _data_ranges(f.fileno(), size)
        di = 0
        view = memoryview(buf)
        for start in range(0, size, block_size):
            end = min(start + block_size, size)
            while di < len(data) and data[di][1] <= start:
                di += 1
            if di == len(data) or data[di][0] >= end:
                h.zero(end - start)
                continue
            f.seek(start)
            got = 0
            while got < end - start:
                n = f.readinto(view[got : end - start])
                if not n:
                    raise OSError(errno.EIO, f"{path} shrank while hashing")
                got += n
            block = view[: end - start]
            if block == zero[: end - start]:
                h.zero(end - start)
            else:
                h.update(block)
    return h.result()
