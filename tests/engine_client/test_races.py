"""The engine cache and updater when things happen during a push: a VM
deleted, a domain detached, a retry falling due, answers out of order,
an OVF imported again."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable

from aiohttp import web

from engine_client.cache import Cache
from engine_client.config import Config, HttpConfig
from engine_client.entities import ImportItem
from engine_client.hostapi import Clients
from engine_client.model import Host
from engine_client.ovf import parse
from engine_client.updater import Updater

from .ovfs import DiskSpec, vm_ovf

AddDomain = Callable[..., str]


def add_vm(cache: Cache, name: str, disks: list[DiskSpec]) -> str:
    vm = str(uuid.uuid4())
    data = vm_ovf(vm, name, disks)
    cache.import_entities([ImportItem(name, parse(data), data)])
    return vm


def process(cache: Cache) -> None:
    cache.process_entities(cache.outdated_entities("", 100))


def test_a_vm_deleted_while_pushed_has_that_store_rewritten(
        cache: Cache, add_domain: AddDomain) -> None:
    sd = add_domain()
    vm = add_vm(cache, "diskless", [])  # in every Active domain's store
    process(cache)
    content = cache.store_content(sd)  # a push starts with it
    assert [m.uuid for m in content.members] == [vm]
    assert cache.delete_entity(vm) == [sd]  # the store may get it: rewrite it
    assert cache.store_pushed(content, 1, "0" * 32, 10240, "h", time.time())  # it did
    assert cache.process_deletions() == [(vm, [sd])]  # the next pass...
    assert cache.store(sd).outdated  # ...rewrites it without the VM


def test_a_domain_detached_while_pushed(cache: Cache, add_domain: AddDomain) -> None:
    sd, other = add_domain(), add_domain()
    add_vm(cache, "vm", [DiskSpec(sd)])
    process(cache)
    content = cache.store_content(sd)
    cache.detach_domain(sd)
    # Neither answer may fail on the store that is gone (it stopped `run`).
    assert cache.store_pushed(content, 1, "0" * 32, 10240, "h", time.time()) is False
    cache.store_failed(content, "boom", time.time() + 60)
    assert [s.sd_uuid for s in cache.stores()] == [other]


def test_answers_out_of_order_keep_the_newer_generation(
        cache: Cache, add_domain: AddDomain) -> None:
    sd = add_domain()
    add_vm(cache, "vm", [DiskSpec(sd)])
    process(cache)
    content = cache.store_content(sd)
    assert cache.store_pushed(content, 2, "2" * 32, 10240, "h2", time.time())
    assert cache.store_pushed(content, 1, "1" * 32, 10240, "h1", time.time())
    store = cache.store(sd)
    assert (store.generation, store.digest, store.host) == (2, "2" * 32, "h2")


def test_an_overdue_retry_wakes_the_loop_at_once(cache: Cache, cfg: Config,
                                                 add_domain: AddDomain) -> None:
    sd = add_domain()
    add_vm(cache, "vm", [DiskSpec(sd)])
    process(cache)
    # It failed, and its retry fell due while another push took long.
    cache.store_failed(cache.store_content(sd), "boom", time.time() - 5)
    updater = Updater(cache, cfg)
    wake = updater._next_wakeup(cache.stores(), {d.uuid: d for d in cache.domains()})
    assert wake == 1.0 and cfg.updater.interval > 60


def test_an_inactive_disk_stays_inactive_when_imported_again(
        cache: Cache, add_domain: AddDomain) -> None:
    sd = add_domain()
    vm = str(uuid.uuid4())
    data = vm_ovf(vm, "vm", [DiskSpec(sd)])
    cache.import_entities([ImportItem("vm", parse(data), data)])
    (disk,) = cache.disks(vm)
    cache.set_disk(vm, disk.disk_uuid, active=False)
    (again,) = cache.import_entities([ImportItem("vm", parse(data), data)])
    assert again.action == "unchanged"
    assert [d.active for d in cache.disks(vm)] == [False]


async def test_an_answer_in_several_pieces_is_read_whole() -> None:
    domains = {f"{i:08d}-0000-4000-8000-000000000000": {"status": "Active", "pad": "x" * 200}
               for i in range(400)}
    body = json.dumps({"pool_id": "p", "map_version": 3, "domains": domains}).encode()

    async def stats(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[:len(body) // 2])
        await asyncio.sleep(0.05)
        await resp.write(body[len(body) // 2:])
        return resp

    app = web.Application()
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    clients = Clients(HttpConfig())
    try:
        answer = await clients(Host("h", f"http://127.0.0.1:{port}", "t", ())).stats()
    finally:
        await clients.close()
        await runner.cleanup()
    assert len(body) > 64 << 10 and answer["domains"] == domains


def test_set_disk_shareable_reaches_the_ovf(cache: Cache, add_domain: AddDomain) -> None:
    sd = add_domain()
    vm = add_vm(cache, "vm", [DiskSpec(sd), DiskSpec(sd)])
    disks = [d.disk_uuid for d in cache.disks(vm)]
    cache.set_disk(vm, disks[0], shareable=True)
    process(cache)
    ovf = cache.ovf(vm, cached=True)
    assert ovf is not None
    flags = {d.disk_uuid: d.shareable for d in parse(ovf).disks}
    assert flags == {disks[0]: True, disks[1]: False}
