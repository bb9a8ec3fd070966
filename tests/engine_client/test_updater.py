"""The updater's pass and loop: entities, backoff and failing hosts.

Hosts here are a port with nothing listening (down), a tiny aiohttp server
answering a wrong digest, a server that never answers (injected failures)
and a slow one that counts the pushes in flight.  Passes against real daemons are in test_e2e.py.
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from unittest import mock

import pytest
import xxhash
from aiohttp import web

from engine_client import hostapi
from engine_client.cache import Cache
from engine_client.config import Config
from engine_client.entities import ImportItem
from engine_client.model import DomainStatus
from engine_client.ovf import parse
from engine_client.passreport import PassReport
from engine_client.phase import Outcome
from engine_client.updater import Updater
from tests.stream.daemon import free_port

from .conftest import SilentHost, fake_host, no_store
from .ovfs import DiskSpec, vm_ovf

AddDomain = Callable[..., str]


def add_vm(cache: Cache, name: str, disks: list[DiskSpec], vm: str | None = None,
           generation: int = 1) -> str:
    vm = vm or str(uuid.uuid4())
    data = vm_ovf(vm, name, disks, generation=generation)
    cache.import_entities([ImportItem(name, parse(data), data)])
    return vm


@pytest.fixture
async def updater(cache: Cache, cfg: Config) -> AsyncIterator[Updater]:
    u = Updater(cache, cfg, rand=lambda: 0.0)
    yield u
    await u.close()


def down_host(cache: Cache, name: str, *sds: str) -> None:
    cache.add_host(name, f"http://127.0.0.1:{free_port()}", "token", list(sds))


@pytest.fixture
def silent_url(silent_host: SilentHost) -> str:
    return silent_host.url


async def test_chunks_and_locked_entities(cache: Cache, cfg: Config, updater: Updater,
                                          add_domain: AddDomain) -> None:
    cfg.updater.chunk_size = 2
    sd = add_domain()
    vms = sorted(add_vm(cache, f"vm{i}", [DiskSpec(sd)]) for i in range(5))
    r = await updater.run_once()
    assert sorted(o.uuid for o in r.processed) == vms and r.skipped == []
    first = cache.entity(vms[0]).ovf_digest
    # The VM changes while locked: skipped, the cached OVF stays the old one.
    add_vm(cache, "vm0-renamed", [DiskSpec(sd)], vm=vms[0])
    cache.set_locked(vms[0], True)
    r = await updater.run_once()
    assert [(o.uuid, o.reason) for o in r.skipped] == [(vms[0], "vm is ImageLocked")]
    e = cache.entity(vms[0])
    assert (e.ovf_digest, e.ovf_generation, e.db_generation) == (first, 1, 2)
    cache.set_locked(vms[0], False)
    r = await updater.run_once()
    assert [o.uuid for o in r.processed] == [vms[0]]
    e = cache.entity(vms[0])
    assert e.ovf_digest == e.source_digest != first and e.ovf_generation == 2


async def test_generation_moving_while_processed_is_skipped(cache: Cache,
                                                            add_domain: AddDomain) -> None:
    sd = add_domain()
    vm = add_vm(cache, "a", [DiskSpec(sd)])
    selected = cache.outdated_entities("", 100)
    add_vm(cache, "a2", [DiskSpec(sd)], vm=vm)  # edited meanwhile (another process)
    (o,) = cache.process_entities(selected)
    assert (o.processed, o.reason) == (False, "its generation moved while it was processed")
    assert cache.entity(vm).ovf_generation == 0


async def test_which_domains_are_marked(cache: Cache, updater: Updater,
                                        add_domain: AddDomain) -> None:
    a, b, c = add_domain(), add_domain(), add_domain(status="Maintenance")
    disk = DiskSpec(a)
    vm = add_vm(cache, "moved", [disk])
    diskless = add_vm(cache, "diskless", [])
    await updater.run_once()
    for sd in (a, b):  # pretend a and b got stores with what they hold now
        cache.store_pushed(cache.store_content(sd), 1, "0" * 32, 1024, "h", time.time(), 0.0)
    assert {s.sd_uuid: s.stored for s in cache.stores() if not s.outdated} == {
        a: frozenset({vm, diskless}), b: frozenset({diskless})}
    cache.set_disk(vm, disk.disk, b)
    r = await updater.run_once()
    assert [(o.uuid, o.domains) for o in r.processed] == [(vm, tuple(sorted([a, b])))], \
        "the old domain (its store lists the VM) and the new one"
    cache.store_pushed(cache.store_content(a), 2, "0" * 32, 1024, "h", time.time(), 0.0)
    cache.store_pushed(cache.store_content(b), 2, "0" * 32, 1024, "h", time.time(), 0.0)
    add_vm(cache, "diskless2", [], vm=diskless)
    r = await updater.run_once()
    assert r.processed[0].domains == tuple(sorted([a, b])), "every Active domain, not c"
    assert c in [d.sd_uuid for d in r.domains if d.outcome == "waiting"]


async def test_deletion_marks_the_domains(cache: Cache, updater: Updater,
                                          add_domain: AddDomain) -> None:
    sd = add_domain()
    vm = add_vm(cache, "a", [DiskSpec(sd)])
    await updater.run_once()
    cache.store_pushed(cache.store_content(sd), 1, "0" * 32, 1024, "h", time.time(), 0.0)
    assert not cache.store(sd).outdated
    cache.delete_entity(vm)
    assert not cache.store(sd).outdated, "marked by the next pass, not at once"
    r = await updater.run_once()
    assert r.deleted == [(vm, [sd])]
    assert cache.store(sd).outdated and cache.store_content(sd).members == ()


async def test_host_down_leaves_outdated_and_backs_off(cache: Cache, cfg: Config,
                                                       updater: Updater,
                                                       add_domain: AddDomain) -> None:
    sd = add_domain()
    down_host(cache, "h1", sd)
    add_vm(cache, "a", [DiskSpec(sd)])
    before = time.time()
    r = await updater.run_once()
    (d,) = r.domains
    assert d.outcome == "failed" and (d.detail or "").startswith(
        f"could not check the domain's existing OVF store: host h1: "
        f"GET /domains/{sd}/ovf-store/info: cannot connect to")
    s = cache.store(sd)
    assert s.outdated and s.failures == 1 and s.generation is None
    assert before + 30 <= s.next_attempt <= time.time() + 30
    r = await updater.run_once()
    assert [x.outcome for x in r.domains] == ["waiting"]
    assert cache.store(sd).failures == 1
    r = await updater.run_once(retry_now=True)
    assert [x.outcome for x in r.domains] == ["failed"]
    s = cache.store(sd)
    assert s.failures == 2 and s.next_attempt >= time.time() + 59, "the delay doubled"


async def test_next_host_is_tried(cache: Cache, updater: Updater, add_domain: AddDomain,
                                  wrong_digest_url: str) -> None:
    sd = add_domain()
    down_host(cache, "a-down", sd)
    cache.add_host("b-wrong", wrong_digest_url, "t", [sd])
    vm = add_vm(cache, "a", [DiskSpec(sd)])
    r = await updater.run_once()
    (d,) = r.domains
    assert d.outcome == "failed"
    assert "host a-down: GET /info/: cannot connect" in (d.detail or "")
    assert "host b-wrong: it stored" in (d.detail or "")
    assert "the store is not marked updated" in (d.detail or "")
    s = cache.store(sd)
    assert s.outdated and s.generation is None and s.digest is None
    assert s.stored == {vm}, "the host may hold it now: a change of it must mark the domain"


async def test_no_host_and_unwritable_domains(cache: Cache, updater: Updater,
                                              add_domain: AddDomain) -> None:
    lonely = add_domain()
    parked = add_domain(status="Maintenance")
    r = await updater.run_once()
    by_sd = {d.sd_uuid: d for d in r.domains}
    assert by_sd[lonely].outcome == "failed"
    assert by_sd[lonely].detail == (f"no host serves domain {lonely}; add one with "
                                    f"'sluice-engine host add ... --domain {lonely}'")
    assert (by_sd[parked].outcome, by_sd[parked].detail) == ("waiting",
                                                             "the domain is Maintenance")
    assert cache.store(parked).failures == 0


async def beside_a_silent_host(cache: Cache, updater: Updater, slow_sd: str, silent_url: str,
                              fast_sd: str, fast_url: str) -> tuple[PassReport, float]:
    """A pass with ``slow_sd`` on a host that never answers and ``fast_sd``
    on one that fails its push at once: that failure is recorded within
    2 s, while the pass still waits for the slow host, and the slow
    domain has no failure then.  The pass's report and seconds."""
    cache.add_host("slow", silent_url, "t", [slow_sd])
    cache.add_host("fast", fast_url, "t", [fast_sd])
    start = time.monotonic()
    task = asyncio.ensure_future(updater.run_once())
    while cache.store(fast_sd).failures == 0:
        assert time.monotonic() - start < 2, "the fast domain waited for the slow host"
        await asyncio.sleep(0.02)
    assert not task.done() and cache.store(slow_sd).failures == 0
    return await task, time.monotonic() - start


async def test_slow_host_does_not_stall_others(cache: Cache, cfg: Config, updater: Updater,
                                               add_domain: AddDomain, silent_url: str,
                                               wrong_digest_url: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cfg.http.request_timeout = cfg.http.upload_timeout = 3
    monkeypatch.setattr(hostapi, "INFO_TIMEOUT", 3)  # not its 20 s: a quicker test
    slow_sd, fast_sd = add_domain(), add_domain()
    r, took = await beside_a_silent_host(cache, updater, slow_sd, silent_url, fast_sd,
                                         wrong_digest_url)
    # The slow domain, never pushed, waits out its store check (GET .../info,
    # 3 s) and then its push (3 s); nothing else waits for it.
    assert took < 9
    by_sd = {d.sd_uuid: d for d in r.domains}
    assert "no answer within 3 s" in (by_sd[slow_sd].detail or "")
    assert all(s.outdated for s in cache.stores())


async def test_a_host_slow_to_list_stores_stalls_no_push(
        cache: Cache, cfg: Config, updater: Updater, add_domain: AddDomain,
        silent_url: str, wrong_digest_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pass lists the stores of up-to-date domains (copies missing?);
    a host that never answers that holds up only its own domain: the
    outdated one on another host is pushed meanwhile, and the up-to-date
    one stays up to date, unreported."""
    cfg.http.request_timeout = cfg.http.upload_timeout = 3
    monkeypatch.setattr(hostapi, "INFO_TIMEOUT", 3)
    listed_sd, fast_sd = add_domain(), add_domain()
    cache.store_pushed(cache.store_content(listed_sd), 4, "a" * 32, 10240, "slow",
                       time.time(), time.time())
    assert not cache.store(listed_sd).outdated
    r, _ = await beside_a_silent_host(cache, updater, listed_sd, silent_url, fast_sd,
                                      wrong_digest_url)
    assert [d.sd_uuid for d in r.domains] == [fast_sd]
    s = cache.store(listed_sd)
    assert (s.outdated, s.generation, s.failures) == (False, 4, 0)


async def test_loop_runs_on_trigger_and_wakes_for_retries(cache: Cache, cfg: Config,
                                                          updater: Updater,
                                                          add_domain: AddDomain) -> None:
    sd = add_domain(status="Maintenance")  # nothing to push: passes are quick
    task = asyncio.ensure_future(updater.run_forever())
    try:
        vm = add_vm(cache, "a", [DiskSpec(sd)])
        for _ in range(200):
            if cache.entity(vm).ovf_generation == 1:
                break
            await asyncio.sleep(0.02)
        add_vm(cache, "a2", [DiskSpec(sd)], vm=vm)
        await asyncio.sleep(0.2)
        assert cache.entity(vm).ovf_generation == 1, "the loop waits for the interval"
        updater.trigger()
        for _ in range(200):
            if cache.entity(vm).ovf_generation == 2:
                break
            await asyncio.sleep(0.02)
        assert cache.entity(vm).ovf_generation == 2
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    cache.set_domain_status(sd, DomainStatus.ACTIVE)
    down_host(cache, "h", sd)
    await updater.run_once()
    wake = updater._next_wakeup(cache.stores(), {d.uuid: d for d in cache.domains()})
    assert 25 < wake <= 30, "a due retry comes before the hourly interval"


async def test_entity_phase_commits_a_chunk_per_transaction(
        cache: Cache, cfg: Config, updater: Updater, add_domain: AddDomain) -> None:
    cfg.updater.chunk_size = 3
    sd = add_domain(status="Maintenance")  # the domain phase has nothing to push
    vms = {add_vm(cache, f"vm{i}", [DiskSpec(sd)]) for i in range(7)}
    chunks: list[list[str]] = []
    real = cache.process_entities

    def recording(selected: Sequence[tuple[str, int]]) -> list[Outcome]:
        chunks.append([u for u, _ in selected])
        return real(selected)

    statements: list[str] = []
    cache._conn.set_trace_callback(statements.append)
    try:
        with mock.patch.object(cache, "process_entities", recording):
            r = await updater.run_once()
    finally:
        cache._conn.set_trace_callback(None)
    assert r.processed_count == 7 and r.skipped_count == 0
    assert [len(c) for c in chunks] == [3, 3, 1]
    assert {u for c in chunks for u in c} == vms
    # What SQLite ran: each chunk's entities updated in a write transaction
    # of their own, one UPDATE per chunk.
    updated: list[set[str]] = []
    current: list[str] | None = None
    for sql in statements:
        if sql == "BEGIN IMMEDIATE":
            current = []
        elif sql == "COMMIT" and current is not None:
            found = [s for s in current if s.startswith("UPDATE entities SET ovf_digest")]
            if found:
                (update,) = found
                updated.append({u for u in vms if f"'{u}'" in update})
            current = None
        elif current is not None:
            current.append(sql)
    assert updated == [set(c) for c in chunks]


async def test_concurrency_bounds_pushes_in_flight(cache: Cache, cfg: Config,
                                                   updater: Updater, add_domain: AddDomain,
                                                   aiohttp_server: Any) -> None:
    cfg.updater.concurrency = 2
    in_flight: list[int] = [0]
    peak: list[int] = [0]
    puts: list[str] = []

    async def put(request: web.Request) -> web.Response:
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        try:
            body = await request.read()
            await asyncio.sleep(0.2)  # a slow disk: the others pile up meanwhile
        finally:
            in_flight[0] -= 1
        puts.append(request.match_info["sd"])
        return web.json_response({"generation": 1, "tar_length": len(body),
                                  "digest": xxhash.xxh3_128_hexdigest(body)})

    url = await fake_host(aiohttp_server, put)
    sds = [add_domain() for _ in range(4)]
    cache.add_host("h1", url, "t", sds)
    for sd in sds:
        add_vm(cache, f"on-{sd}", [DiskSpec(sd)])
    r = await updater.run_once()
    assert {d.sd_uuid: d.outcome for d in r.domains} == dict.fromkeys(sds, "updated")
    assert sorted(puts) == sorted(sds)
    assert peak[0] == 2, "two pushes at once, never more"


async def test_a_canceled_pass_drops_its_host_lookups(cache: Cache, updater: Updater,
                                                      add_domain: AddDomain,
                                                      aiohttp_server: Any) -> None:
    """SIGTERM cancels a pass while it asks a host for its features (one
    GET /info/ shared by the host's domains): the request goes with the
    pass, and nothing is left to fail later with no one to hear it."""
    asked, dropped = asyncio.Event(), asyncio.Event()

    async def info(request: web.Request) -> web.Response:
        asked.set()
        try:  # until the client goes (the test server may cancel this then)
            while request.transport is not None and not request.transport.is_closing():
                await asyncio.sleep(0.01)
        finally:
            dropped.set()
        return web.json_response({"features": []})

    app = web.Application()
    app.router.add_get("/info/", info)
    app.router.add_get("/domains/{sd}/ovf-store/info", no_store)
    server = await aiohttp_server(app)
    sds = [add_domain(), add_domain()]
    add_vm(cache, "diskless", [])  # marks every active domain
    cache.add_host("h", f"http://127.0.0.1:{server.port}", "t", sds)
    unheard: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, ctx: unheard.append(ctx))
    task = asyncio.ensure_future(updater.run_once())
    await asyncio.wait_for(asked.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(dropped.wait(), 2)
    gc.collect()
    await asyncio.sleep(0.05)
    assert unheard == []
    assert all(s.outdated for s in cache.stores())
