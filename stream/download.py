"""The download pipeline: volume to socket, reading ahead.

While the event loop sends one buffer (``write`` applies backpressure), a
worker thread reads the next one, so disk reads and network sends overlap.
Reads land in pooled aligned buffers (O_DIRECT) and are copied out in the
worker: the transport may keep a reference to what it was given until it is
sent, so a pooled buffer is never handed to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
from collections.abc import Awaitable, Callable

from volume.base import Volume
from volume.errors import VolumeError

from .io import IO

Writer = Callable[[bytes], Awaitable[None]]


async def send(
    write: Writer, io: IO, volume: Volume, start: int, end: int, check: Callable[[], None]
) -> int:
    """Send ``[start, end)`` of ``volume`` through ``write``; return bytes sent."""
    step = io.buffer_size
    bufs = [io.get_buffer(), io.get_buffer()]

    def read(buf: mmap.mmap, offset: int, length: int) -> bytes:
        with memoryview(buf) as view:
            got = 0
            while got < length:
                n = volume.readinto(offset + got, view[got:length])
                if n == 0:
                    raise VolumeError(
                        f"image ended at {offset + got}, before the {end} bytes announced"
                    )
                got += n
            return bytes(view[:length])

    pending: asyncio.Future[bytes] | None = None
    sent = 0
    try:
        pos = start
        cur = 0
        pending = io.submit(read, bufs[cur], pos, min(step, end - pos))
        while pending is not None:
            data = await pending
            pending = None
            pos += len(data)
            if pos < end:
                check()
                cur ^= 1
                pending = io.submit(read, bufs[cur], pos, min(step, end - pos))
            await write(data)
            sent += len(data)
        return sent
    finally:
        if pending is not None:
            await asyncio.shield(_settle(pending))
        for b in bufs:
            io.put_buffer(b)


async def _settle(fut: asyncio.Future[bytes]) -> None:
    with contextlib.suppress(Exception):
        await fut
