"""Copy a disk image into a local volume: sparse-aware and verified.

The source is a local volume or an image URL on another host (any
imageio-compatible server, with its ticket).  Zero and hole ranges of the
source are never sent: they are zeroed (or punched, on a sparse
destination) at the destination.  Data is streamed through the same
double-buffered pipeline as uploads, and hashed in transit.

Verification, overlapped with the transfer (stream/copyverify.py): the
destination's data ranges are read back and block-hashed right behind the
writes, and must equal the transit hash block by block (a difference names
its first offset); the source's own checksum (read independently by its
server, or locally), asked for half way through, must equal the transit
hash too.  Zero ranges are trusted from the zero operation's success.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mmap
import ssl
from typing import Any, Protocol

import aiohttp

from volume.base import Volume, read_exactly
from volume.errors import ChecksumMismatch, InvalidRequest, VolumeError

from . import checksum as checksum_mod
from . import upload
from .copyverify import Span, Verifier, merge
from .io import IO
from .jobs import Job
from .wire.blkhash import StreamingBlockHash, first_difference

log = logging.getLogger(__name__)

#: Verification hash: the block hash with xxh3-128, 25 times faster than
#: blake2b (measurements.md), so verifying does not halve the copy rate.
ALGORITHM = "xxh3_128"
BLOCK_SIZE = 4 << 20
#: One ranged GET at most, as the imageio client does (MAX_COPY_SIZE).
MAX_REQUEST = 128 << 20
#: A remote source that sends nothing for this long has gone away.
IDLE_TIMEOUT = 60.0
#: The slowest source checksum waited for, in bytes per second.
CHECKSUM_MIN_RATE = 20 * 1000**2


class SourceError(VolumeError):
    """The source host failed or went away."""

    http_status = 502
    code = "source-error"


class _Transit:
    """Hash of the data as it is written, counting progress on the job."""

    def __init__(self, job: Job) -> None:
        self.hash = StreamingBlockHash(ALGORITHM, BLOCK_SIZE)
        self._job = job

    def update(self, data: memoryview) -> None:
        self.hash.update(data)
        self._job.bytes_done += len(data)


class Source(Protocol):
    size: int

    async def spans(self) -> list[Span]: ...
    async def copy(self, span: Span, dst: Volume, transit: _Transit, job: Job) -> None: ...
    async def checksum(self) -> dict[str, Any]: ...
    async def close(self) -> None: ...


class LocalSource:
    def __init__(self, io: IO, volume: Volume, size: int) -> None:
        self.io, self.volume, self.size = io, volume, size

    async def spans(self) -> list[Span]:
        extents = await self.io.run(lambda: list(self.volume.extents()))
        return merge([Span(e.start, e.length, e.zero) for e in extents], self.size)

    async def copy(self, span: Span, dst: Volume, transit: _Transit, job: Job) -> None:
        """Read ahead one buffer while the previous one is hashed and written."""
        io, src = self.io, self.volume
        bufs = [io.get_buffer()]
        try:
            bufs.append(io.get_buffer())
        except BaseException:
            io.put_buffer(bufs[0])
            raise

        def read(buf: mmap.mmap, offset: int, length: int) -> int:
            with memoryview(buf) as view:
                read_exactly(src, offset, view[:length], "source")
            return length

        def write(buf: mmap.mmap, offset: int, length: int) -> None:
            with memoryview(buf) as view:
                transit.update(view[:length])
                dst.write(offset, view[:length])

        step = io.buffer_size
        pending_write: asyncio.Future[None] | None = None
        cur, pos = 0, span.start
        pending_read: asyncio.Future[int] | None = io.submit(
            read, bufs[0], pos, min(step, span.end - pos))
        try:
            while pending_read is not None:
                n = await pending_read
                pending_read = None
                if pending_write is not None:
                    await pending_write
                pending_write = io.submit(write, bufs[cur], pos, n)
                pos += n
                cur ^= 1
                if pos < span.end:
                    pending_read = io.submit(read, bufs[cur], pos, min(step, span.end - pos))
            if pending_write is not None:
                await pending_write
                pending_write = None
        finally:
            for fut in (pending_read, pending_write):
                if fut is not None:
                    await asyncio.shield(asyncio.gather(fut, return_exceptions=True))
            for b in bufs:
                io.put_buffer(b)

    async def checksum(self) -> dict[str, Any]:
        """A second read of the whole source, though the transit hash is
        already the hash of exactly the bytes read from it (there is no
        transport in between): it is what notices a source written during
        the copy (a VM still running, a stray writer), which a move must
        catch before it deletes the source, and a source that reads back
        differently (a flaky disk).  It costs one more read of the source
        storage, overlapping the second half of the transfer (copyverify's
        CHECKSUM_AT); the destination's disk does not see it."""
        return await checksum_mod.checksum(self.io, self.volume, self.size, ALGORITHM,
                                           BLOCK_SIZE, lambda: None)

    async def close(self) -> None:
        await self.io.run(self.volume.close)


class RemoteSource:
    """An image on another host, through its imageio-compatible API."""

    def __init__(self, io: IO, url: str, ssl_ctx: ssl.SSLContext | bool,
                 write_depth: int = 1) -> None:
        self.io, self.url = io, url.rstrip("/")
        self.write_depth = write_depth
        self.size = 0
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=IDLE_TIMEOUT)
        self._session = aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(ssl=ssl_ctx),
            auto_decompress=False)

    async def _get(self, path: str, **kw: Any) -> Any:
        try:
            async with self._session.get(self.url + path, **kw) as resp:
                if resp.status != 200:
                    raise SourceError(f"source answered {resp.status} for {path or 'GET'}: "
                                      f"{(await resp.text())[:200].strip()}")
                body = await resp.read()
        except aiohttp.ClientError as e:
            raise SourceError(f"source host unreachable: {e}") from None
        try:
            return json.loads(body)
        except ValueError:
            raise SourceError(f"source answered {path} with something else than JSON: "
                              f"{body[:100]!r}") from None

    async def spans(self) -> list[Span]:
        extents = await self._get("/extents", params={"context": "zero"})
        spans = _spans(extents)
        self.size = spans[-1].end if spans else 0
        return merge(spans, self.size)

    async def copy(self, span: Span, dst: Volume, transit: _Transit, job: Job) -> None:
        for start in range(span.start, span.end, MAX_REQUEST):
            end = min(start + MAX_REQUEST, span.end)
            headers = {"Range": f"bytes={start}-{end - 1}"}
            try:
                async with self._session.get(self.url, headers=headers) as resp:
                    if resp.status != 206 or resp.content_length != end - start:
                        raise SourceError(f"source answered {resp.status} to a ranged GET of "
                                          f"{start}-{end - 1}")
                    # The transit hash takes the bytes in order on the loop,
                    # so the writes may run write_depth at a time.
                    n = await upload.receive(
                        upload.pieces(resp.content), self.io, dst, offset=start, limit=end,
                        zstd=False, hasher=None, check=lambda: None,
                        idle_timeout=IDLE_TIMEOUT, length=end - start,
                        inspect=transit.update, depth=self.write_depth)
            except (aiohttp.ClientError, TimeoutError) as e:
                raise SourceError(f"source host failed at offset {start}: "
                                  f"{e or type(e).__name__}") from None
            if n != end - start:
                raise SourceError(f"source sent {n} of {end - start} bytes at offset {start}")

    async def checksum(self) -> dict[str, Any]:
        # The answer comes only once the source host has read the whole image,
        # while it also serves the transfer: allow for a slow one.
        timeout = aiohttp.ClientTimeout(total=None, connect=10,
                                        sock_read=IDLE_TIMEOUT + self.size / CHECKSUM_MIN_RATE)
        result = await self._get(
            "/checksum", params={"algorithm": ALGORITHM, "block_size": str(BLOCK_SIZE)},
            timeout=timeout)
        if not isinstance(result, dict) or not isinstance(result.get("checksum"), str):
            raise SourceError(f"source answered /checksum without a checksum: "
                              f"{str(result)[:100]}")
        return result

    async def close(self) -> None:
        await self._session.close()


def _spans(extents: Any) -> list[Span]:
    """A source's ``/extents`` answer: extents that tile the image from 0."""
    spans: list[Span] = []
    for e in extents if isinstance(extents, list) else [extents]:
        if not isinstance(e, dict):
            raise SourceError(f"source answered /extents with {str(extents)[:100]}")
        start, length, zero = e.get("start"), e.get("length"), e.get("zero")
        end = spans[-1].end if spans else 0
        if (type(start) is not int or type(length) is not int or type(zero) is not bool
                or start != end or length <= 0):
            raise SourceError(f"source answered /extents with a bad extent at offset {end}: "
                              f"{str(e)[:100]}")
        spans.append(Span(start, length, zero))
    return spans


async def zero(io: IO, dst: Volume, span: Span, punch: bool, step: int) -> None:
    for start in range(span.start, span.end, step):
        await io.run(dst.zero, start, min(step, span.end - start), punch)


async def copy(io: IO, job: Job, source: Source, dst: Volume, *, punch: bool,
               grow: bool = False) -> None:
    """``grow``: the destination is a file that may get longer (the bytes of a
    qcow2 image, whose file size is not its virtual size)."""
    spans = await source.spans()
    size = source.size
    if size > await io.run(dst.size) and not grow:
        raise InvalidRequest(f"the destination is smaller than the source ({size} bytes)")
    job.bytes_total = sum(s.length for s in spans if not s.zero)
    transit = _Transit(job)
    verify = Verifier(io, job, source, dst, spans, ALGORITHM, BLOCK_SIZE)
    try:
        for span in spans:
            if span.zero:
                await zero(io, dst, span, punch, 128 << 20)
                transit.hash.zero(span.length)
                verify.advance(span.end)
            else:
                await source.copy(span, verify.volume, transit, job)
        job.state = "verifying"  # the last buffer's read-back, the source's checksum
        await io.run(dst.flush)  # meanwhile the read-back goes on
        theirs, back = await verify.finish()
    finally:
        await verify.close()
    moved = transit.hash.finish()
    job.result = {"checksum": moved, "source_checksum": theirs, "destination_checksum": back}
    where = first_difference(transit.hash.digests, verify.back.digests, BLOCK_SIZE)
    if where is not None:
        raise ChecksumMismatch(f"the destination differs from the data sent, first at offset "
                               f"{where}")
    if theirs.get("checksum") != moved["checksum"]:
        raise ChecksumMismatch("the source's own checksum differs from the data received: "
                               "the source changed during the copy or the data was corrupted")
