"""Real daemons each serving its own domain, as the engine sees them, and
reading back what they stored; shared by the end-to-end tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from engine_client.cache import Cache
from engine_client.entities import ImportItem
from engine_client.ovf import parse
from stream.wire.tarread import OvfTarReader
from tests.stream.daemon import Daemon

from .ovfs import DiskSpec, vm_ovf


@dataclass
class Member:
    daemon: Daemon
    sd: str
    host: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.daemon.port}"


@dataclass
class Store:
    ovfs: dict[str, bytes]  # entity UUID -> OVF
    vm_status: dict[str, int]
    generation: int
    digest: str


Cluster = Callable[[int], "asyncio.Future[list[Member]]"]


async def get(m: Member, path: str) -> tuple[int, bytes, dict[str, str]]:
    async with aiohttp.ClientSession() as s, s.get(
            m.url + path, headers={"Authorization": f"Bearer {m.daemon.token}"}) as r:
        return r.status, await r.read(), dict(r.headers)


async def stored(m: Member) -> Store:
    status, tar, headers = await get(m, f"/domains/{m.sd}/ovf-store")
    assert status == 200, tar
    reader = OvfTarReader(max_total=len(tar))
    reader.feed(tar)
    summary = reader.finish()
    ovfs = {e.name[:-4]: tar[e.offset:e.offset + e.size] for e in summary.entries
            if e.name.endswith(".ovf")}
    assert headers["X-Ovf-Digest"] == f"xxh3_128:{summary.digest}"
    return Store(ovfs, summary.vm_status, int(headers["X-Ovf-Generation"]), summary.digest)


def add(cache: Cache, name: str, disks: list[DiskSpec], vm: str | None = None,
        template: bool = False) -> str:
    vm = vm or str(uuid.uuid4())
    data = vm_ovf(vm, name, disks, template=template)
    cache.import_entities([ImportItem(name, parse(data), data)])
    return vm


def cached(cache: Cache, vm: str) -> bytes:
    data = cache.ovf(vm, cached=True)
    assert data is not None
    return data
