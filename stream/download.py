"""The download pipeline: volume to socket, zero-copy, reading ahead.

Up to ``depth`` aligned buffers are read at once in worker threads (two
reads in flight keep the disk busier than one), and the event loop sends
them in order straight from the pooled buffer: no copy into ``bytes``.

The transport may keep a reference to what it was given until the kernel
took it, so a buffer is read into again only once the transport holds
nothing more.  ``ResponseSink`` makes the transport pause the writer
whenever anything is left unsent, so each write returns flushed; if a
transport still holds data anyway, the buffer is retired (never reused)
and a fresh one takes its place: slower, never wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
from collections import deque
from collections.abc import Callable
from typing import Protocol

from aiohttp import web

from volume.base import Volume, read_exactly

from .io import IO


class Sink(Protocol):
    async def write(self, data: memoryview) -> None:
        """Send ``data``; return once the kernel has it, if possible."""
        ...

    def holding(self) -> bool:
        """Whether the data last written may still be referenced."""
        ...


class ResponseSink:
    """A prepared ``StreamResponse`` over its request's transport."""

    #: TLS writes go in slices of this size: the SSL transport encrypts
    #: each write at once into a buffer of its own, and a 16 MiB one is a
    #: fresh allocation every time, while 1 MiB ones are reused by malloc.
    TLS_SLICE = 1024 * 1024

    def __init__(self, request: web.Request, resp: web.StreamResponse) -> None:
        self._resp = resp
        self._transport = request.transport
        self._protocol = request.protocol
        tls = request.transport is not None and \
            request.transport.get_extra_info("sslcontext") is not None
        self._slice = self.TLS_SLICE if tls else 0

    def __enter__(self) -> ResponseSink:
        if self._transport is not None:
            # Pause the writer while anything is unsent (high=1: uvloop's
            # SSL transport pauses at size >= high, its TCP one at > high),
            # so aiohttp's drain after a write returns when the kernel has it.
            self._transport.set_write_buffer_limits(high=1, low=0)
        return self

    def __exit__(self, *_: object) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.set_write_buffer_limits()  # keep-alive: defaults again

    async def write(self, data: memoryview) -> None:
        if self._slice:
            for i in range(0, len(data), self._slice):
                await self._resp.write(data[i:i + self._slice])
        else:
            await self._resp.write(data)
        if self.holding():
            # aiohttp drains only after large writes; with the limits at 0
            # the protocol is paused while anything is unsent, so this
            # waits for the rest (the end of the body, a small range).
            await self._protocol._drain_helper()

    def holding(self) -> bool:
        t = self._transport
        return t is not None and t.get_write_buffer_size() > 0


async def send(
    sink: Sink, io: IO, volume: Volume, start: int, end: int, check: Callable[[], None],
    depth: int = 2, progress: Callable[[int], None] | None = None,
) -> int:
    """Send ``[start, end)`` of ``volume`` to ``sink``; return bytes sent.
    ``progress`` gets the bytes sent so far after each buffer."""
    step = io.buffer_size
    free = [io.get_buffer() for _ in range(depth)]
    inflight: deque[tuple[asyncio.Future[int], mmap.mmap]] = deque()

    def read(buf: mmap.mmap, offset: int, length: int) -> int:
        with memoryview(buf) as view:
            read_exactly(volume, offset, view[:length], "image")
        return length

    pos = start
    sent = 0

    def refill() -> None:
        nonlocal pos
        while free and pos < end:
            buf = free.pop()
            length = min(step, end - pos)
            inflight.append((io.submit(read, buf, pos, length), buf))
            pos += length

    try:
        refill()
        while inflight:
            fut, buf = inflight[0]
            n = await fut
            inflight.popleft()
            check()
            await sink.write(memoryview(buf)[:n])
            sent += n
            if progress is not None:
                progress(sent)
            if not sink.holding():
                free.append(buf)
            elif pos < end:
                free.append(io.get_buffer())  # buf stays with the transport
            refill()
        return sent
    finally:
        for fut, buf in inflight:
            # A worker may still be reading into buf: wait before reuse.
            await asyncio.shield(_settle(fut))
            free.append(buf)
        for buf in free:
            io.put_buffer(buf)


async def _settle(fut: asyncio.Future[int]) -> None:
    with contextlib.suppress(Exception):
        await fut
