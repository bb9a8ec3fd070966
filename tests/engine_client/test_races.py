"""The engine cache and updater when things happen during a push: a VM
deleted, a domain detached, a retry falling due, answers out of order,
an OVF imported again."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import xxhash
from aiohttp import web

from engine_client.cache import Cache
from engine_client.config import Config, HttpConfig
from engine_client.entities import ImportItem
from engine_client.hostapi import Clients
from engine_client.model import Host
from engine_client.ovf import parse
from engine_client.updater import Updater

from .conftest import fake_host
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
    assert cache.store_pushed(content, 1, "0" * 32, 10240, "h", time.time(), 0.0)  # it did
    assert cache.process_deletions() == [(vm, [sd])]  # the next pass...
    assert cache.store(sd).outdated  # ...rewrites it without the VM


def test_a_domain_detached_while_pushed(cache: Cache, add_domain: AddDomain) -> None:
    sd, other = add_domain(), add_domain()
    add_vm(cache, "vm", [DiskSpec(sd)])
    process(cache)
    content = cache.store_content(sd)
    cache.detach_domain(sd)
    # Neither answer may fail on the store that is gone (it stopped `run`).
    assert cache.store_pushed(content, 1, "0" * 32, 10240, "h", time.time(), 0.0) is False
    cache.store_failed(content, "boom", time.time() + 60)
    assert [s.sd_uuid for s in cache.stores()] == [other]


def test_answers_out_of_order_keep_the_newer_generation(
        cache: Cache, add_domain: AddDomain) -> None:
    sd = add_domain()
    add_vm(cache, "vm", [DiskSpec(sd)])
    process(cache)
    content = cache.store_content(sd)
    started = time.time()  # both pushes; the second answer comes last
    assert cache.store_pushed(content, 2, "2" * 32, 10240, "h2", time.time(), started)
    assert cache.store_pushed(content, 1, "1" * 32, 10240, "h1", time.time(), started)
    store = cache.store(sd)
    assert (store.generation, store.digest, store.host) == (2, "2" * 32, "h2")


def test_a_lower_generation_after_the_last_push_is_taken(
        cache: Cache, add_domain: AddDomain) -> None:
    """A generation below the cached one, recorded before this push began:
    the stores went back (a snapshot restored), and hold this push now."""
    sd = add_domain()
    add_vm(cache, "vm", [DiskSpec(sd)])
    process(cache)
    assert cache.store_pushed(cache.store_content(sd), 5, "5" * 32, 10240, "h", 10.0, 9.0)
    cache.mark_outdated(sd)
    assert cache.store_pushed(cache.store_content(sd), 2, "2" * 32, 10240, "h", 21.0, 20.0)
    store = cache.store(sd)
    assert not store.outdated
    assert (store.generation, store.digest, store.last_updated) == (2, "2" * 32, 21.0)


async def test_a_store_marked_during_every_push_backs_off(
        cache: Cache, cfg: Config, add_domain: AddDomain, aiohttp_server: Any) -> None:
    """Marked again while each push is on its way (another process's changes
    or refreshes): the first "superseded" is pushed again at once (the mark
    is a real change), the next ones wait as failures do, not a second."""
    sd = add_domain()
    add_vm(cache, "vm", [DiskSpec(sd)])

    async def put(request: web.Request) -> web.Response:
        body = await request.read()
        with Cache.open(cache.state_dir) as other:  # as another process would
            other.mark_outdated(sd)
        return web.json_response({"generation": 1, "tar_length": len(body),
                                  "digest": xxhash.xxh3_128_hexdigest(body)})

    url = await fake_host(aiohttp_server, put)
    cache.add_host("h", url, "t", [sd])
    updater = Updater(cache, cfg, rand=lambda: 0.0)
    try:
        (d,) = (await updater.run_once()).domains
        assert (d.outcome, d.retry_at) == ("superseded", None)
        domains = {x.uuid: x for x in cache.domains()}
        assert updater._next_wakeup(cache.stores(), domains) == 1.0, "again at once"
        (d,) = (await updater.run_once()).domains
        assert d.outcome == "superseded" and d.retry_at is not None
        s = cache.store(sd)
        assert s.outdated and s.next_attempt == d.retry_at >= time.time() + 29
        assert 29 < updater._next_wakeup(cache.stores(), domains) <= 30
        (d,) = (await updater.run_once()).domains
        assert d.outcome == "waiting"
        (d,) = (await updater.run_once(retry_now=True)).domains
        assert d.outcome == "superseded" and d.retry_at is not None
        assert cache.store(sd).next_attempt >= time.time() + 59, "the delay doubled"
    finally:
        await updater.close()


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


async def test_two_updater_processes_push_a_store_once(
        cache: Cache, cfg: Config, add_domain: AddDomain, aiohttp_server: Any) -> None:
    """``ovf update --once`` twice at once (or beside ``run``, or a domain
    flow): the second pass read the store outdated while the first pushed
    it, and pushed the same content again, a second generation for
    nothing.  The second pass now waits for the first, then finds the
    store updated."""
    sd = add_domain()
    add_vm(cache, "vm", [DiskSpec(sd)])
    puts: list[int] = []
    arrived, release = asyncio.Event(), asyncio.Event()

    async def put(request: web.Request) -> web.Response:
        body = await request.read()
        puts.append(len(body))
        arrived.set()
        await release.wait()
        return web.json_response({"generation": len(puts), "tar_length": len(body),
                                  "digest": xxhash.xxh3_128_hexdigest(body)})

    url = await fake_host(aiohttp_server, put)
    cache.add_host("h", url, "t", [sd])
    with Cache.open(cache.state_dir) as other:  # as another process would
        first, second = Updater(cache, cfg), Updater(other, cfg)
        try:
            one = asyncio.ensure_future(first.run_once())
            await asyncio.wait_for(arrived.wait(), 5)
            two = asyncio.ensure_future(second.run_once())
            await asyncio.sleep(0.5)  # the second pass is under way, or waiting
            release.set()
            a, b = await asyncio.wait_for(asyncio.gather(one, two), 10)
        finally:
            await first.close()
            await second.close()
    assert len(puts) == 1, f"{len(puts)} pushes of one store"
    assert [d.outcome for d in a.domains] == ["updated"] and b.domains == []
    assert not cache.store(sd).outdated
