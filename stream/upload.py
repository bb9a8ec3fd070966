"""The upload pipeline: network bytes into aligned buffers, buffers to disk.

Receiving and writing overlap: while a worker thread writes one full buffer
(one ``pwrite`` of up to 16 MiB, O_DIRECT where the volume supports it), the
event loop fills the other.  Chunks from the socket are copied once, into
the staging buffer; there is no thread hop per chunk, only one per buffer.

With ``Content-Encoding: zstd`` the staging buffers hold compressed bytes;
the worker decompresses them through a bounded-output writer (at most 1 MiB
of output at a time, so a compression bomb cannot balloon memory) into an
aligned output buffer, written the same way.

Nothing past ``limit`` (the ticket size) is ever written: a body that would
cross it is cut off with OutOfRange (416) before the offending buffer goes
to disk.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import zstandard
from aiohttp.http_exceptions import HttpProcessingError

from volume.base import Volume
from volume.errors import InvalidRequest

from .errors import PartialContent
from .io import IO
from .sink import ZSTD_WRITE_SIZE, Sink, too_big
from .wire.zstdframe import BadZstd, FrameTracker

log = logging.getLogger(__name__)

Reader = Callable[[], Awaitable[bytes]]


def pieces(content: aiohttp.StreamReader) -> Reader:
    """``read`` for :func:`receive`: the body's pieces as they arrived.

    ``readany`` joins every piece queued since the last call into one new
    ``bytes``: a second copy of the body exactly when the loop is busiest
    (an OVF store being checked).  ``readchunk`` hands them over one by
    one (for a chunked body, up to the next HTTP chunk end, which may
    still join pieces); the empty pieces it returns at chunk ends are
    skipped, and ``b""`` is the end of the body.  A body without bytes is
    aiohttp's one shared ``EMPTY_PAYLOAD``: once any request has read its
    end, it answers ``(b"", True)`` forever, without awaiting anything.
    """
    async def read() -> bytes:
        while True:
            data, chunk_end = await content.readchunk()
            if data or not chunk_end or content.at_eof():
                return data
    return read

#: Compressed bytes handed to the decoder at once.  Decoding starts only
#: when a staging buffer is full, and the last one only after the body
#: ended: OVF stores shrink about 5 times, so a 4 MiB buffer held 21 MB of
#: tar that was decoded, checked and written after the engine's last byte
#: (measured: 0.13-0.19 s between the last byte of 4 concurrent 52 MB
#: pushes and their answers).
ZSTD_INPUT_SIZE = 1 << 20

#: The largest zstd window a frame may ask for.  The decoder allocates it
#: whatever the body's size: libzstd's default limit (128 MiB) let a 1 MiB
#: body hold 128 MiB per upload.  8 MiB is the limit of the HTTP ``zstd``
#: content coding (RFC 9659 §3); zstd levels up to 19 stay within it.
ZSTD_MAX_WINDOW = 8 << 20

#: The smallest staging buffer: a smaller body of known length gets the
#: power of two that holds it, at least this (a 16 MiB buffer for each
#: 2-byte PUT let 130 stalled ones hold the whole 2 GiB bound).
SMALL_BUFFER = 64 * 1024

#: Seconds between moves of an upload's idle deadline (one timer change
#: per chunk would cost more than the chunk).
RESCHEDULE = 1.0


async def receive(
    read: Reader,
    io: IO,
    volume: Volume,
    *,
    offset: int,
    limit: int,
    zstd: bool,
    hasher: Any,
    check: Callable[[], None],
    idle_timeout: float,
    length: int | None = None,
    buffer_size: int = 0,
    depth: int = 1,
    inspect: Callable[[memoryview], None] | None = None,
    offload: Callable[[], bool] | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Stream a request body into ``volume`` at ``offset``; return bytes written.

    ``read`` is :func:`pieces` of the body.  ``buffer_size`` (default: the
    daemon's) sizes the staging buffers.  ``check`` raises if the ticket
    was cancelled meanwhile; it runs once per buffer.  ``idle_timeout`` ends
    the upload when no byte arrives for that long.  ``length``: the body's
    bytes, when the request says (a small body gets small buffers).
    ``depth``: full buffers being written at once, each at its own offset
    (O_DIRECT writes at queue depth 2 outrun one at a time); only for plain
    bodies without a ``hasher``, which both need the bytes in order.  ``inspect`` sees each
    buffer of a plain body on the event loop before it is written (see
    :func:`_inspect`); it may raise to refuse the body.  While ``offload``
    says so, ``inspect`` runs in a worker instead (a slice that may end in
    a long parse).  ``progress`` is
    called on the loop with the bytes written so far (decoded bytes for
    zstd) each time a buffer's write ends.
    """
    if zstd and inspect is not None:
        raise ValueError("inspect sees plain bodies only; check zstd ones in the volume")
    if zstd or hasher is not None:
        depth = 1
    size = buffer_size or io.buffer_size
    # The staging buffers hold what arrives: for zstd, compressed bytes.
    staging = min(size, ZSTD_INPUT_SIZE) if zstd else size
    count = depth + 1  # those being written, and the one filling
    # A plain body starts at buffer index == offset modulo the volume's
    # alignment: every full buffer goes to disk aligned (no bounce).
    lead = 0 if zstd else offset % max(volume.capabilities.block_size, 1)
    if length is not None:
        need = lead + length
        # Room for one byte more than the body: a buffer it fills exactly
        # would be followed by another, taken after the body was written.
        staging = min(staging, max(SMALL_BUFFER, 1 << need.bit_length()))
        count = min(count, need // staging + 1)
    # One buffer now; the rest (and zstd's output buffer) at once before the
    # first write: a body that never fills its first buffer holds no more,
    # and at the bound the answer is a clean 503 with nothing written.
    out: mmap.mmap | None = None
    taken = False
    bufs = [io.get_buffer(staging)]  # every buffer this upload holds
    free: list[mmap.mmap] = []
    sink = Sink(volume, offset, limit, hasher, None, check)
    decoder = (
        zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_writer(
            sink,  # type: ignore[arg-type]  # it only needs write()
            write_size=ZSTD_WRITE_SIZE,
        )
        if zstd
        else None
    )
    frames = FrameTracker() if zstd else None
    inflight: deque[tuple[asyncio.Future[None], mmap.mmap, int]] = deque()
    loop = asyncio.get_running_loop()

    def take_rest(more: int) -> None:
        nonlocal out, taken
        taken = True
        if zstd and out is None:
            out = io.get_buffer(size)
            sink.attach(out)
        for _ in range(more):
            free.append(io.get_buffer(staging))
            bufs.append(free[-1])

    def job(buf: mmap.mmap, start: int, end: int, at: int) -> None:
        with memoryview(buf) as view:
            if decoder is not None:
                try:
                    decoder.write(view[start:end])
                except zstandard.ZstdError as e:  # the client's bytes, not our fault
                    raise BadZstd(f"invalid zstd body: {e}") from None
            elif depth == 1:
                sink.put(view[start:end])
            else:
                volume.write(at, view[start:end])

    async def oldest() -> mmap.mmap:
        # A cancel (the idle timeout) while waiting here must leave the job
        # in ``inflight``, and its future uncancelled, so that ``finally``
        # waits for the worker before the buffer goes back to the pool.
        done, buf, end = inflight[0]
        await asyncio.shield(done)
        inflight.popleft()
        if progress is not None:  # jobs end in order: all before ``end`` is written
            progress((sink.pos if depth == 1 else end) - offset)
        return buf

    cur = bufs[0]
    view = memoryview(cur)
    try:
        head = fill = lead
        received = 0
        at = offset  # where the next full buffer goes (plain bodies)
        # Moved at most every RESCHEDULE seconds, the deadline is kept that
        # much past ``idle_timeout`` after the last move: never early for a
        # byte that came since, at most that late.
        async with asyncio.timeout(idle_timeout + RESCHEDULE) as deadline:
            last = loop.time()
            while True:
                chunk = await read()
                if not chunk:
                    break
                now = loop.time()
                if now - last > RESCHEDULE:
                    deadline.reschedule(now + idle_timeout + RESCHEDULE)
                    last = now
                received += len(chunk)
                if frames is not None:
                    frames.feed(chunk)
                elif offset + received > limit:
                    raise too_big(offset + received - len(chunk), limit)
                src = memoryview(chunk)
                while src:
                    n = min(len(src), len(view) - fill)
                    view[fill : fill + n] = src[:n]
                    fill += n
                    src = src[n:]
                    if fill == len(view):
                        check()
                        if inspect is not None:
                            await _inspect(inspect, view[head:fill], io, offload)
                        if not taken:
                            take_rest(count - 1)
                        if len(inflight) >= depth:
                            free.append(await oldest())
                        end = at + fill - head
                        inflight.append((io.submit(job, cur, head, fill, at), cur, end))
                        at += fill - head
                        if not free:
                            free.append(io.get_buffer(staging))
                            bufs.append(free[-1])
                        cur = free.pop()
                        view.release()
                        view = memoryview(cur)
                        head = fill = 0
        if inspect is not None and fill > head:
            await _inspect(inspect, view[head:fill], io, offload)
        view.release()
        while inflight:
            free.append(await oldest())
        if fill > head:
            check()
            if not taken:
                take_rest(0)
            end = at + fill - head
            inflight.append((io.submit(job, cur, head, fill, at), cur, end))
            await oldest()
            at += fill - head
        if decoder is not None and frames is not None:
            if not frames.complete:
                raise InvalidRequest("zstd stream ends in the middle of a frame")
            assert out is not None  # a complete frame was decoded
            inflight.append((io.submit(sink.drain), out, at))
            await oldest()
        return (at if depth > 1 else sink.pos) - offset
    finally:
        view.release()
        for done, _, _ in inflight:
            # A worker may still be using a buffer: never hand it back early.
            await asyncio.shield(_settle(done))
        for b in bufs:
            io.put_buffer(b)
        sink.release()
        if out is not None:
            io.put_buffer(out)


@contextmanager
def client_errors(idle_timeout: float) -> Iterator[None]:
    """What the client did to the body, as the 400 it is, not a 500: it
    went away or sent a malformed one, or nothing for ``idle_timeout``."""
    try:
        yield
    except (HttpProcessingError, ConnectionError) as e:
        raise PartialContent(f"The client sent an incomplete body: {e}") from e
    except TimeoutError:
        raise PartialContent(f"No data received for {idle_timeout} seconds") from None


#: What ``inspect`` sees at once; the event loop runs other tasks in between.
INSPECT_SLICE = 1 << 20


async def _inspect(inspect: Callable[[memoryview], None], data: memoryview, io: IO,
                   offload: Callable[[], bool] | None) -> None:
    """Pure-Python checks (the OVF tar reader) run here, on the loop, in
    slices: in a worker thread they would hold the GIL against the loop
    receiving the next buffer, and both would crawl (measured: 211 MB of
    OVFs took 0.29-0.42 s that way, 0.28-0.29 s here).  A slice ``offload``
    picks runs in a worker: one parse of a large JSON entry would hold the
    loop whole (a 100,000-entry OVF manifest: 0.3-0.8 s), where a worker
    gives it the GIL every switch interval."""
    for i in range(0, len(data), INSPECT_SLICE):
        piece = data[i:i + INSPECT_SLICE]
        if offload is None or not offload():
            inspect(piece)
            await asyncio.sleep(0)
            continue
        done = io.submit(inspect, piece)
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            await asyncio.wait([done])  # it reads the buffer until it returns
            raise


async def _settle(fut: asyncio.Future[None]) -> None:
    try:
        await fut
    except Exception:
        log.debug("write in flight failed after the upload had already failed", exc_info=True)
