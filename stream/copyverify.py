"""A copy job's verification, overlapped with the transfer.

Two checks run beside the data instead of after it:

- Read-back: each range is read back from the destination as soon as its
  write has returned (at most one buffer behind), block-hashed in image
  order, zero ranges from the zero operation's success.  When the last
  buffer is written only that buffer is left to read.  The destination
  reports completed writes through :class:`Tracked`, the volume the
  transfer writes into.
- Source checksum: the source's own block hash (its host reads it again,
  or we do for a local source), started once ``CHECKSUM_AT`` of the data
  has moved; see there for why not at once.

Both results are compared by the caller (stream/copy.py).  The copy's
plan, its spans, lives here too: both sides walk it in the same order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from volume.base import Capabilities, Extent, Volume, read_exactly
from volume.errors import VolumeError

from .io import IO
from .jobs import Job
from .wire.blkhash import StreamingBlockHash

#: Share of the data moved before the source checksum is asked for.  The
#: checksum is a second, independent read of the source, and it is what
#: notices a source written during the copy: a change to block k is caught
#: when it falls between the transfer's read of k and the checksum's.  Asked
#: at once (0.0), both reads run nearly in step and that window shrinks to
#: almost nothing (test_source_written_during_the_copy_fails_it in
#: tests/stream/test_copy.py fails then).  Asked at the end (1.0), every
#: change until then is caught, but the whole re-read comes after the data
#: (with the read-back, 3.4 s of a 7.2 s copy of 2 GiB in bench.copy).  Half
#: way, any change during the first half of the transfer is still caught,
#: and the re-read overlaps the second half: from a source that reads at
#: least twice as fast as the transfer it ends about when the data does.
CHECKSUM_AT = 0.5


@dataclass(frozen=True)
class Span:
    start: int
    length: int
    zero: bool

    @property
    def end(self) -> int:
        return self.start + self.length


def merge(spans: list[Span], size: int) -> list[Span]:
    """Clip to ``size`` and merge neighbours of the same kind."""
    out: list[Span] = []
    for s in spans:
        if s.start >= size:
            break
        s = Span(s.start, min(s.end, size) - s.start, s.zero)
        if out and out[-1].zero == s.zero and out[-1].end == s.start:
            out[-1] = Span(out[-1].start, out[-1].length + s.length, s.zero)
        else:
            out.append(s)
    return out


class _Source(Protocol):
    async def checksum(self) -> dict[str, Any]: ...


class Tracked:
    """The destination volume, reporting each write's range once on disk."""

    def __init__(self, volume: Volume, written: Callable[[int, int], None]) -> None:
        self._v, self._written = volume, written

    @property
    def capabilities(self) -> Capabilities:
        return self._v.capabilities

    @property
    def readonly(self) -> bool:
        return self._v.readonly

    def size(self) -> int:
        return self._v.size()

    def readinto(self, offset: int, buf: memoryview) -> int:
        return self._v.readinto(offset, buf)

    def write(self, offset: int, buf: memoryview) -> None:
        self._v.write(offset, buf)
        self._written(offset, offset + len(buf))  # in the worker thread, once on disk

    def zero(self, offset: int, length: int, punch: bool = False) -> None:
        self._v.zero(offset, length, punch)

    def flush(self) -> None:
        self._v.flush()

    def extents(self) -> Iterator[Extent]:
        return self._v.extents()

    def close(self) -> None:
        self._v.close()


class Frontier:
    """Where the bytes written so far end without a gap, when writes of
    consecutive ranges may end in any order."""

    def __init__(self) -> None:
        self.done = 0
        #: Writes that ended ahead of one still running before them: start -> end.
        self._ranges: dict[int, int] = {}

    def ended(self, start: int, end: int) -> int:
        """A write of ``[start, end)`` ended; returns the new frontier."""
        if start > self.done:
            self._ranges[start] = end
            return self.done
        self.done = max(self.done, end)
        while self.done in self._ranges:
            self.done = self._ranges.pop(self.done)
        return self.done


class Verifier:
    """Read-back and source checksum of one copy, as background tasks.

    ``spans`` are the copy's spans in image order; the transfer writes them
    in that order, up to ``write_depth`` writes at once, which may end in
    any order: a write's range counts once everything before it has ended
    too, so the bytes before :attr:`_done` are final.
    """

    def __init__(self, io: IO, job: Job, source: _Source, dst: Volume, spans: list[Span],
                 algorithm: str, block_size: int) -> None:
        self._io, self._job, self._source, self._dst = io, job, source, dst
        self._spans = spans
        self.back = StreamingBlockHash(algorithm, block_size)
        self.volume = Tracked(dst, self._written)
        self._loop = asyncio.get_running_loop()
        self._done = 0
        self._frontier = Frontier()
        self._ended = False
        self._wake: asyncio.Future[None] | None = None
        self._checksum_at = job.bytes_total * CHECKSUM_AT
        self._checksum: asyncio.Task[dict[str, Any]] | None = None
        self._readback = asyncio.create_task(self._read_back())

    def _written(self, start: int, end: int) -> None:
        self._loop.call_soon_threadsafe(self._ended_write, start, end)

    def _ended_write(self, start: int, end: int) -> None:
        if self._frontier.ended(start, end) > self._done:
            self._moved()

    def advance(self, end: int) -> None:
        """Everything before ``end`` is written or zeroed (on the loop)."""
        self._frontier.ended(self._frontier.done, end)
        self._moved()

    def _moved(self) -> None:
        self._done = self._frontier.done
        if self._checksum is None and self._job.bytes_done >= self._checksum_at:
            self._start_checksum()
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _start_checksum(self) -> None:
        self._checksum = asyncio.create_task(self._source.checksum())

    async def _until(self, pos: int) -> None:
        """Wait until the bytes before ``pos`` are final."""
        while self._done < pos:
            if self._ended:
                raise VolumeError(f"the copy ended at offset {self._done}, before {pos}")
            self._wake = self._loop.create_future()
            await self._wake

    async def _read_back(self) -> None:
        io, dst, back = self._io, self._dst, self.back
        buf = io.get_buffer()

        def read(offset: int, length: int) -> None:
            with memoryview(buf) as view:
                read_exactly(dst, offset, view[:length], "destination")
                back.update(view[:length])

        fut: asyncio.Future[None] | None = None
        try:
            for s in self._spans:
                if s.zero:
                    await self._until(s.end)
                    back.zero(s.length)
                    continue
                pos = s.start
                while pos < s.end:
                    await self._until(pos + 1)
                    end = min(self._done, s.end, pos + len(buf))
                    fut = io.submit(read, pos, end - pos)
                    # Shielded: a cancel must not free buf under the worker.
                    await asyncio.shield(fut)
                    fut = None
                    pos = end
        finally:
            if fut is not None:
                await asyncio.wait([fut])
            io.put_buffer(buf)

    async def finish(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """After the last write: the source's checksum and the read-back's."""
        self._ended = True
        self.advance(self._done)
        if self._checksum is None:
            self._start_checksum()
        assert self._checksum is not None
        await self._readback
        return await self._checksum, self.back.finish()

    async def close(self) -> None:
        """Stop whatever still runs (the copy failed or was canceled)."""
        tasks = [t for t in (self._readback, self._checksum) if t is not None]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for t in tasks:
            if not t.cancelled():
                t.exception()  # retrieved: the copy's own error is the one to report
