"""Stream one domain's OVF store to a host, and check what it stored.

The sans-IO planner (``stream.wire.storetar``) knows the tar's length
from the cached OVFs' sizes before the first byte (``Content-Length`` when
not compressed) and builds ``info.json`` with the manifest of every entry;
the other headers are made as the stream reaches them.  ``TarStream``
produces the bytes, reading OVFs from the cache a batch at a time by their
digest (so memory stays at ``info.json``, the member list, one batch and
two chunks), hashing the tar with xxh3-128 as it goes and compressing it
with one zstd stream when the host supports it, a chunk at a time in a
worker thread while the chunk before is sent.

The domain counts as updated only when the host's answer has the same
digest and length as what was sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import xxhash
import zstandard

from stream.wire import manifest
from stream.wire.storetar import StoreTar

from .errors import EngineError, HostError
from .hostapi import HostClient
from .model import StoreContent

log = logging.getLogger(__name__)

#: OVFs by digest, read from the cache; called in a worker thread.
Fetch = Callable[[Sequence[str]], dict[str, bytes]]

#: Measured on 200 MB of bench OVFs (bench/ovf/ovfgen.py, 1 MiB chunks, one
#: core): level 3 shrinks them 7.6 times at 0.68 s, level 1 9.5 times at
#: 0.28 s, -1 5.4 times, -3 5.4 times at 0.17 s.  Since the chunks of a
#: pass are made in one thread, compressing is on its critical path: a pass
#: of 10,000 VMs against a local daemon took 1.13-1.20 s at -1 (and at -3
#: or -5), 1.27-1.36 s at 1.  On a 1 Gb/s link the two cost about the same
#: (-1 sends 39 MB in 0.31 s, 1 sends 22 MB in 0.18 s but compresses for
#: 0.28 s); on faster links -1 is ahead.
ZSTD_LEVEL = -1


class CacheCorrupt(EngineError):
    """An OVF read back from the cache is not what the plan promised."""


class ContentChanged(EngineError):
    """An OVF the plan named left the cache during the push: its entity got
    a newer one (and another process dropped the old, unused blob).  The
    store was marked meanwhile; the next pass pushes what it holds now."""


@dataclass(frozen=True)
class PushResult:
    sd_uuid: str
    host: str
    generation: int
    tar_length: int
    digest: str
    sent: int  # bytes on the wire (compressed or not)
    zstd: bool
    entities: int


class TarStream:
    """The bytes of ``tar``, as an async iterable of chunks.

    Each chunk is made in ``executor`` (its OVFs fetched by digest with
    ``fetch``, ``batch`` at a time, as the stream reaches them; hashed;
    compressed) while the one before it is being sent: making a chunk costs
    about as long as sending it, and one after the other the push of a
    52 MB store took 0.21 s where sending alone took 0.07 s.  A stream can
    be iterated once (one zstd compressor per stream).
    """

    def __init__(self, tar: StoreTar, fetch: Fetch, batch: int, chunk_size: int,
                 zstd: bool, executor: Executor | None = None) -> None:
        self.tar = tar
        self._executor = executor  # None: the loop's default
        self._fetch = fetch
        self._batch = max(1, batch)
        self._chunk_size = chunk_size
        self._compressor = (zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
                            if zstd else None)
        self._hash = xxhash.xxh3_128()
        self._pieces = tar.pieces()
        self._ended = False
        self._blobs: dict[str, bytes] = {}
        self._fetched = 0  # OVFs before this index were fetched
        self.produced = 0  # tar bytes
        self.sent = 0  # bytes handed to the connection
        #: Why the stream stopped, if it did: aiohttp reports it only as a
        #: failed send.
        self.error: CacheCorrupt | ContentChanged | None = None

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()

    @property
    def complete(self) -> bool:
        return self.produced == self.tar.total_size

    def _ovf(self, index: int) -> bytes:
        uuid, size, digest = self.tar.ovfs[index]
        if index >= self._fetched:  # the next batch; the last one is dropped
            wanted = self.tar.ovfs[index:index + self._batch]
            self._fetched = index + len(wanted)
            self._blobs = self._fetch(list(dict.fromkeys(m[2] for m in wanted)))
        data = self._blobs.get(digest)
        if data is None:
            self.error = ContentChanged(f"the cached OVF {uuid}.ovf (digest {digest}) was "
                                        "replaced in the cache while it was pushed")
            raise self.error
        if len(data) != size or xxhash.xxh3_128_hexdigest(data) != digest:
            self.error = CacheCorrupt(f"the cached OVF {uuid}.ovf (digest {digest}) changed "
                                      "in the cache; nothing was marked updated")
            raise self.error
        return data

    def _emit(self, raw: bytes) -> bytes:
        self._hash.update(raw)
        self.produced += len(raw)
        out = raw if self._compressor is None else self._compressor.compress(raw)
        self.sent += len(out)
        return out

    def _next_chunk(self) -> bytes | None:
        """The next bytes for the wire (b"" while zstd holds them back), None
        after the last; in a worker thread, one call at a time."""
        # Pieces are joined once a chunk's worth is there: one copy of each
        # byte, where a growing bytearray copied them twice or more.
        parts: list[bytes] = []
        size = 0
        for piece in self._pieces:
            data = self._ovf(piece) if isinstance(piece, int) else piece
            parts.append(data)
            size += len(data)
            if size >= self._chunk_size:
                return self._emit(b"".join(parts))
        if self._ended:
            return None
        self._ended = True
        out = self._emit(b"".join(parts)) if parts else b""
        if self._compressor is not None:
            tail = self._compressor.flush()
            self.sent += len(tail)
            out += tail
        return out

    async def __aiter__(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        ahead = loop.run_in_executor(self._executor, self._next_chunk)
        try:
            while (out := await ahead) is not None:
                ahead = loop.run_in_executor(self._executor, self._next_chunk)
                if out:
                    yield out
        finally:
            # The send failed or was canceled: the chunk being made is not
            # wanted (its thread runs to its end; it only reads the cache).
            # On a chunk that failed meanwhile, cancel() marks its error as
            # seen: it is ``self.error``, not a "never retrieved" report.
            ahead.cancel()


def plan_store(content: StoreContent, now: float) -> StoreTar:
    """The tar of ``content``: ``info.json`` dated ``now``, the OVFs, ``metadata.json``."""
    return StoreTar(manifest.java_date(now), content.sd_uuid, content.members,
                    content.vm_status, int(now))


def _int_field(answer: dict[str, Any], key: str, host: str) -> int:
    value = answer.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise HostError(host, f"its OVF store answer has no integer {key!r}: {answer}",
                        code="bad-answer")
    return value


async def push_store(client: HostClient, content: StoreContent, fetch: Fetch, now: float,
                     zstd: bool, batch: int, chunk_size: int,
                     executor: Executor | None = None) -> PushResult:
    """Stream ``content`` to ``client``'s host; raises unless it stored exactly
    that.  Its chunks are made in ``executor`` (the loop's default if None)."""
    plan = plan_store(content, now)
    stream = TarStream(plan, fetch, batch, chunk_size, zstd, executor)
    host = client.host.name
    log.info("pushing the OVF store of domain %s to host %s: %d OVFs, %d bytes, zstd=%s",
             content.sd_uuid, host, len(content.members), plan.total_size, zstd)
    try:
        answer = await client.put_ovf_store(content.sd_uuid, stream,
                                            None if zstd else plan.total_size, zstd)
    except HostError:
        if stream.error is not None:
            raise stream.error from None
        raise
    if not stream.complete:
        raise HostError(host, f"it answered after {stream.produced} of {plan.total_size} "
                        "bytes of the tar", code="incomplete")
    generation = _int_field(answer, "generation", host)
    length = _int_field(answer, "tar_length", host)
    digest = answer.get("digest")
    if digest != stream.digest or length != plan.total_size:
        raise HostError(host, f"it stored {length} bytes with digest {digest} for domain "
                        f"{content.sd_uuid}, but {plan.total_size} bytes with digest "
                        f"{stream.digest} were sent; the store is not marked updated",
                        code="digest-mismatch")
    return PushResult(content.sd_uuid, host, generation, length, stream.digest, stream.sent,
                      zstd, len(content.members))
