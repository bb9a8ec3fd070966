"""Stream one domain's OVF store to a host, and check what it stored.

The sans-IO planner (``stream.wire.tarplan``) lays out the whole tar from
the cached OVFs' sizes and digests before the first byte: so the length is
known (``Content-Length`` when not compressed) and ``info.json`` carries
the manifest of every entry.  ``TarStream`` then produces the planned bytes,
reading OVFs from the cache a batch at a time by their digest (so memory
stays at one batch plus one chunk whatever the number of VMs), hashing the
tar with xxh3-128 as it goes and compressing it with one zstd stream when
the host supports it.

The domain counts as updated only when the host's answer has the same
digest and length as what was sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import xxhash
import zstandard

from stream.wire import manifest, tarplan

from .errors import EngineError, HostError
from .hostapi import HostClient
from .model import StoreContent

log = logging.getLogger(__name__)

Fetch = Callable[[Sequence[str]], Awaitable[dict[str, bytes]]]

#: Compress chunks of at least this size in a thread, not on the event loop
#: (zstd level 3 takes about 3 ms a MiB).
OFFLOAD_SIZE = 256 << 10
ZSTD_LEVEL = 3


class CacheCorrupt(EngineError):
    """An OVF read back from the cache is not what the plan promised."""


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
    """The bytes of ``plan``, as an async iterable of chunks.

    Members whose ``source`` is a digest are fetched with ``fetch`` in
    batches of ``batch``; ``info.json`` and ``metadata.json`` carry their bytes.
    A stream can be iterated once (one zstd compressor per stream).
    """

    def __init__(self, plan: tarplan.Plan, fetch: Fetch, batch: int, chunk_size: int,
                 zstd: bool) -> None:
        self.plan = plan
        self._fetch = fetch
        self._batch = batch
        self._chunk_size = chunk_size
        self._compressor = (zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
                            if zstd else None)
        self._hash = xxhash.xxh3_128()
        self._blobs: dict[str, bytes] = {}
        self._pending = [s.member for s in plan.segments
                         if isinstance(s, tarplan.Data) and isinstance(s.member.source, str)]
        self.produced = 0  # tar bytes
        self.sent = 0  # bytes handed to the connection
        #: Why the stream stopped, if it did: aiohttp reports it only as a
        #: failed send.
        self.error: CacheCorrupt | None = None

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()

    @property
    def complete(self) -> bool:
        return self.produced == self.plan.total_size

    async def _member(self, member: tarplan.Member) -> bytes:
        key = member.source
        if key not in self._blobs:
            # Usually the first pending member: fetch it and the next ones.
            i = next((i for i, m in enumerate(self._pending) if m.source == key), None)
            wanted = [member] if i is None else self._pending[i:i + self._batch]
            if i is not None:
                del self._pending[:i + len(wanted)]
            self._blobs.update(await self._fetch([m.source for m in wanted]))
        data = self._blobs.pop(key, None)
        if data is None or len(data) != member.size or xxhash.xxh3_128_hexdigest(data) != key:
            self.error = CacheCorrupt(f"the cached OVF {member.name} (digest {key}) is missing "
                                      "or changed in the cache; nothing was marked updated")
            raise self.error
        return data

    async def _emit(self, raw: bytes) -> bytes:
        self._hash.update(raw)
        self.produced += len(raw)
        if self._compressor is None:
            out = raw
        elif len(raw) >= OFFLOAD_SIZE:
            out = await asyncio.to_thread(self._compressor.compress, raw)
        else:
            out = self._compressor.compress(raw)
        self.sent += len(out)
        return out

    async def __aiter__(self) -> AsyncIterator[bytes]:
        buf = bytearray()
        for seg in self.plan.segments:
            if isinstance(seg, tarplan.Header):
                buf += seg.data
            elif isinstance(seg, tarplan.Padding):
                buf += bytes(seg.length)
            else:
                inline = seg.inline()
                buf += inline if inline is not None else await self._member(seg.member)
            if len(buf) >= self._chunk_size:
                out = await self._emit(bytes(buf))
                buf.clear()
                if out:
                    yield out
        out = await self._emit(bytes(buf)) if buf else b""
        if self._compressor is not None:
            tail = self._compressor.flush()
            self.sent += len(tail)
            out += tail
        if out:
            yield out


def plan_store(content: StoreContent, now: float) -> tarplan.Plan:
    """The tar of ``content``: ``info.json`` dated ``now``, the OVFs, ``metadata.json``."""
    ovfs = [(m.uuid, m.size, m.digest, m.digest) for m in content.members]
    plan, _info, _metadata, _manifest = tarplan.ovf_store_plan(
        manifest.java_date(now), content.sd_uuid, ovfs, content.vm_status, int(now))
    return plan


def _int_field(answer: dict[str, Any], key: str, host: str) -> int:
    value = answer.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise HostError(host, f"its OVF store answer has no integer {key!r}: {answer}",
                        code="bad-answer")
    return value


async def push_store(client: HostClient, content: StoreContent, fetch: Fetch, now: float,
                     zstd: bool, batch: int, chunk_size: int) -> PushResult:
    """Stream ``content`` to ``client``'s host; raises unless it stored exactly that."""
    plan = plan_store(content, now)
    stream = TarStream(plan, fetch, batch, chunk_size, zstd)
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
