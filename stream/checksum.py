"""Block-hash checksum of a volume, computed piece by piece in worker threads.

Blocks that lie entirely in a zero extent are hashed from a precomputed
digest without reading them, so a sparse 20 GiB image with 1 GiB of data
costs about the time of its 1 GiB.

The image is hashed in pieces of a few blocks, one executor call each: the
executor is shared with every control request and transfer, so a hash of a
whole 100 GiB image in one call would hold a worker for minutes (8 such
requests held all of them).  Between pieces other work gets the threads, and
``check`` (a canceled ticket, a client gone) stops the hash.  Pieces are
whole blocks, so the result does not depend on the piece size.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from volume.base import Volume
from volume.errors import VolumeError

from .io import IO
from .wire.blkhash import BlockHash

MiB = 1 << 20
#: The piece size of copy jobs' source checksums (the image API's comes
#: from ``transfer.checksum_step``, the same by default).
DEFAULT_STEP = 32 * MiB

ZeroRanges = list[tuple[int, int]]


def zero_ranges(volume: Volume) -> ZeroRanges:
    return [(e.start, e.end) for e in volume.extents() if e.zero]


def piece_size(step: int, block_size: int) -> int:
    """``step`` rounded down to whole blocks, at least one block."""
    return max(1, step // block_size) * block_size


def hash_piece(
    volume: Volume, h: BlockHash, zeros: ZeroRanges, start: int, end: int, buf: Any
) -> None:
    """Feed ``[start, end)`` of ``volume`` (``start`` on a block boundary,
    ``end`` too unless it is the image's end) to ``h``, with ``buf``
    (>= block_size) as scratch."""
    block_size = h.block_size
    zi = 0
    with memoryview(buf) as view:
        for pos in range(start, end, block_size):
            length = min(block_size, end - pos)
            block_end = pos + length
            while zi < len(zeros) and zeros[zi][1] <= pos:
                zi += 1
            if zi < len(zeros) and zeros[zi][0] <= pos and block_end <= zeros[zi][1]:
                h.zero(length)
                continue
            got = 0
            while got < length:
                n = volume.readinto(pos + got, view[got:length])
                if n == 0:
                    # Past the end of a short file: imageio reads zeros there.
                    view[got:length] = bytes(length - got)
                    break
                got += n
            h.update(view[:length])


async def checksum(
    io: IO,
    volume: Volume,
    size: int,
    algorithm: str,
    block_size: int,
    check: Callable[[], None],
    step: int = DEFAULT_STEP,
) -> dict[str, Any]:
    """Hash ``[0, size)`` of ``volume``, one executor call per piece of about
    ``step`` bytes; ``check`` runs on the loop before each piece and stops
    the hash by raising."""
    if size < 0:
        raise VolumeError("negative size")
    h = BlockHash(algorithm, block_size)
    zeros = await io.run(zero_ranges, volume)
    piece = piece_size(step, block_size)
    buf = io.get_buffer(block_size)
    fut: asyncio.Future[None] | None = None
    try:
        for start in range(0, size, piece):
            check()
            fut = io.submit(hash_piece, volume, h, zeros, start, min(start + piece, size), buf)
            # Shielded: a cancel must leave ``fut`` running, not done, while
            # its worker still hashes into buf (see ``finally``).
            await asyncio.shield(fut)
        return h.result()
    finally:
        if fut is None or fut.done():
            io.put_buffer(buf)
        else:
            # Canceled while a worker hashes into buf: buf goes back when
            # the piece is done, and the caller waits for it (a fraction of
            # a second) so that its volume stays open until then.
            fut.add_done_callback(lambda _: io.put_buffer(buf))
            await asyncio.wait([fut])
