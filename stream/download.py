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

A client that stops reading would pin those buffers for as long as its
connection stays open: a write that moves no byte for ``stall_timeout``
seconds (checked every quarter of it) aborts the connection instead, and
the buffers go back to the pool (imageio's socket timeout on a send ends
such a download the same way).
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

from .errors import Stalled
from .io import IO

#: Buffers a download reads ahead into (two reads in flight keep the disk
#: busier than one).
DEPTH = 2


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

    def __init__(self, request: web.Request, resp: web.StreamResponse,
                 stall_timeout: float) -> None:
        self._resp = resp
        self._stall_timeout = stall_timeout
        self._transport = request.transport
        self._protocol = request.protocol
        tls = request.transport is not None and \
            request.transport.get_extra_info("sslcontext") is not None
        self._slice = self.TLS_SLICE if tls else 0
        #: Loop time of the last slice the transport took (TLS: its buffer
        #: size repeats from slice to slice, and says nothing of progress).
        self._took = 0.0

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
        task = asyncio.ensure_future(self._write(data))
        try:
            await self._watch(task)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait([task])

    async def _watch(self, task: asyncio.Future[None]) -> None:
        """Wait for ``task``; raise Stalled once the transport sent nothing
        for ``stall_timeout`` seconds (checked 4 times per period)."""
        loop = asyncio.get_running_loop()
        last_size, last_move = -1, loop.time()
        while True:
            done, _ = await asyncio.wait([task], timeout=self._stall_timeout / 4)
            if done:
                return task.result()
            t = self._transport
            size = t.get_write_buffer_size() if t is not None else 0
            now = loop.time()
            if size != last_size or self._took > last_move:
                last_size, last_move = size, max(now, self._took)
            elif now - last_move >= self._stall_timeout:
                if t is not None:
                    t.abort()  # drops what it holds: the buffers can go back
                raise Stalled(f"the client read nothing for {self._stall_timeout:g} seconds: "
                              "connection aborted")

    async def _write(self, data: memoryview) -> None:
        if self._slice:
            for i in range(0, len(data), self._slice):
                await self._resp.write(data[i:i + self._slice])
                self._took = asyncio.get_running_loop().time()
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
    depth: int = DEPTH, progress: Callable[[int], None] | None = None,
) -> int:
    """Send ``[start, end)`` of ``volume`` to ``sink``; return bytes sent.
    ``progress`` gets the bytes sent so far after each buffer."""
    step = io.buffer_size
    free: list[mmap.mmap] = []
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
        for _ in range(depth):
            free.append(io.get_buffer())
        refill()
        while inflight:
            fut, buf = inflight[0]
            # Shielded: a cancel must not mark the read done while its
            # worker still fills buf (``finally`` waits for it instead).
            n = await asyncio.shield(fut)
            check()  # before buf leaves inflight: a refusal gives it back
            inflight.popleft()
            try:
                await sink.write(memoryview(buf)[:n])
            except BaseException:
                if sink.holding():
                    io.retire(buf)
                else:
                    free.append(buf)
                raise
            sent += n
            if progress is not None:
                progress(sent)
            if not sink.holding():
                free.append(buf)
            else:
                io.retire(buf)  # buf stays with the transport
                if pos < end:
                    free.append(io.get_buffer())
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
