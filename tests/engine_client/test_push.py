"""The tar stream, read back by the host's own validator and by tarfile."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import tarfile
import uuid
from collections.abc import Callable, Sequence

import pytest
import xxhash
import zstandard

from engine_client.cache import Cache
from engine_client.config import Config
from engine_client.entities import ImportItem
from engine_client.errors import HostError
from engine_client.hostapi import HostClient, make_session
from engine_client.model import Host, StoreContent, VmStatus
from engine_client.ovf import parse
from engine_client.push import (
    CacheCorrupt,
    ContentChanged,
    TarStream,
    plan_store,
    push_store,
)
from stream.wire.tarread import OvfTarReader

from .ovfs import DiskSpec, vm_ovf

NOW = 1_700_000_000.0


def fill(cache: Cache, sd: str, count: int, padding: int = 0) -> StoreContent:
    """``count`` VMs with a disk on ``sd``, processed; the store's content."""
    items = []
    for i in range(count):
        vm = str(uuid.uuid4())
        data = vm_ovf(vm, f"vm{i}", [DiskSpec(sd)], padding=padding)
        items.append(ImportItem(f"vm{i}", parse(data), data))
    cache.import_entities(items)
    cache.set_status(items[0].ovf.uuid, VmStatus.UP)
    cache.process_entities(cache.outdated_entities("", 10_000))
    return cache.store_content(sd)


async def collect(stream: TarStream) -> bytes:
    return b"".join([chunk async for chunk in stream])


class Fetcher:
    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.calls: list[int] = []

    def __call__(self, digests: Sequence[str]) -> dict[str, bytes]:
        self.calls.append(len(digests))
        return self.cache.read_blobs(digests)


@pytest.mark.parametrize("zstd", [False, True], ids=["plain", "zstd"])
async def test_stream_is_a_valid_store(cache: Cache, add_domain: Callable[..., str],
                                       zstd: bool) -> None:
    sd = add_domain()
    content = fill(cache, sd, 25, padding=3000)
    plan = plan_store(content, NOW)
    fetch = Fetcher(cache)
    stream = TarStream(plan, fetch, batch=10, chunk_size=64 << 10, zstd=zstd)
    wire = await collect(stream)
    tar = zstandard.ZstdDecompressor().decompressobj().decompress(wire) if zstd else wire
    assert fetch.calls == [10, 10, 5], "OVFs are read a batch at a time"
    assert stream.complete and len(tar) == plan.total_size and stream.sent == len(wire)
    assert stream.digest == xxhash.xxh3_128_hexdigest(tar)
    reader = OvfTarReader(max_total=len(tar))
    reader.feed(tar)
    summary = reader.finish()
    assert summary.digest == stream.digest
    names = [e.name for e in summary.entries]
    assert names == ["info.json", *[f"{m.uuid}.ovf" for m in content.members], "metadata.json"]
    assert summary.vm_status == content.vm_status and len(content.vm_status) == 1
    assert summary.info["Storage Domains"] == [{"uuid": sd}]
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        first = content.members[0]
        member = t.extractfile(f"{first.uuid}.ovf")
        assert member is not None
        assert member.read() == cache.read_blobs([first.digest])[first.digest]
        info = t.extractfile("info.json")
        assert info is not None
        assert json.load(info)["Last Updated"] == "Tue Nov 14 22:13:20 UTC 2023"


async def test_empty_store(cache: Cache, add_domain: Callable[..., str]) -> None:
    content = cache.store_content(add_domain())
    stream = TarStream(plan_store(content, NOW), Fetcher(cache), 10, 1 << 20, False)
    tar = await collect(stream)
    reader = OvfTarReader(max_total=len(tar))
    reader.feed(tar)
    assert [e.name for e in reader.finish().entries] == ["info.json", "metadata.json"]


async def test_changed_blob_is_refused(cache: Cache, cfg: Config,
                                       add_domain: Callable[..., str],
                                       wrong_digest_url: str) -> None:
    content = fill(cache, add_domain(), 2)

    def wrong(digests: Sequence[str]) -> dict[str, bytes]:
        return {d: b"x" * 10 for d in digests}

    stream = TarStream(plan_store(content, NOW), wrong, 10, 1 << 20, False)
    with pytest.raises(CacheCorrupt, match="changed in the cache; nothing was marked updated"):
        await collect(stream)
    async with make_session(cfg.http) as session:  # the same error, not a failed send
        client = HostClient(Host("h1", wrong_digest_url, "t", ()), session, cfg.http)
        with pytest.raises(CacheCorrupt, match="changed in the cache; nothing was marked updated"):
            await push_store(client, content, wrong, NOW, False, 10, 1 << 20)


async def test_blob_gone_meanwhile_is_a_content_change(
        cache: Cache, add_domain: Callable[..., str]) -> None:
    """Another process's pass replaced an OVF and dropped the old blob: not
    corruption, the store was marked and the next pass pushes it."""
    content = fill(cache, add_domain(), 2)

    def gone(digests: Sequence[str]) -> dict[str, bytes]:
        return {}

    stream = TarStream(plan_store(content, NOW), gone, 10, 1 << 20, False)
    with pytest.raises(ContentChanged, match="was replaced in the cache while it was pushed"):
        await collect(stream)


@pytest.mark.parametrize("zstd", [False, True], ids=["plain", "zstd"])
async def test_wrong_digest_is_an_error(cache: Cache, cfg: Config, add_domain: Callable[..., str],
                                        wrong_digest_url: str, zstd: bool) -> None:
    content = fill(cache, add_domain(), 3)
    async with make_session(cfg.http) as session:
        client = HostClient(Host("h1", wrong_digest_url, "t", ()), session, cfg.http)
        with pytest.raises(HostError, match=r"but .* bytes with digest .* were sent; "
                                            r"the store is not marked updated") as e:
            await push_store(client, content, Fetcher(cache), NOW, zstd, 10, 1 << 20)
    assert e.value.code == "digest-mismatch"


async def test_stream_makes_one_chunk_ahead(cache: Cache, add_domain: Callable[..., str]) -> None:
    """The next chunk is made while one is sent, never more: a consumer
    that stops after the first chunk leaves at most two chunks made."""
    content = fill(cache, add_domain(), 25, padding=3000)
    fetch = Fetcher(cache)
    chunk = 8 << 10
    stream = TarStream(plan_store(content, NOW), fetch, 1, chunk, False)
    chunks = aiter(stream)
    first = await anext(chunks)
    await chunks.aclose()  # type: ignore[attr-defined]
    await asyncio.sleep(0.2)  # the chunk being made when it closed ends in its thread
    biggest = max(m.size for m in content.members)
    assert len(first) >= chunk
    assert stream.produced <= 2 * (chunk + biggest) and len(fetch.calls) < 25
    assert not stream.complete


async def test_stream_closed_with_a_failed_chunk_ahead_logs_nothing(
        cache: Cache, add_domain: Callable[..., str], caplog: pytest.LogCaptureFixture) -> None:
    """The consumer stops while the chunk made ahead has failed: that error
    is the stream's (``error``), not an asyncio "never retrieved" report."""
    content = fill(cache, add_domain(), 25, padding=3000)
    calls = 0

    def fetch(digests: Sequence[str]) -> dict[str, bytes]:
        nonlocal calls
        calls += 1
        return cache.read_blobs(digests) if calls == 1 else {}

    stream = TarStream(plan_store(content, NOW), fetch, 1, 8 << 10, False)
    chunks = aiter(stream)
    await anext(chunks)
    for _ in range(100):  # the chunk ahead fails in its thread
        if stream.error is not None:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    await chunks.aclose()  # type: ignore[attr-defined]
    del chunks
    gc.collect()
    await asyncio.sleep(0)
    assert isinstance(stream.error, ContentChanged)
    assert "never retrieved" not in caplog.text
