"""Maintenance, activation and detach against real ``sluice serve`` daemons:
the order of the statuses the hosts are given, the OVF store refreshed in
between (read back from the host), and a failed refresh stopping the flow
unless forced."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import xxhash
from aiohttp import web

from engine_client import cli, passlock
from engine_client import flows as flows_module
from engine_client.cache import Cache
from engine_client.config import Config
from engine_client.errors import InvalidInput, NotFound
from engine_client.flows import FlowFailed, FlowReport, Flows
from engine_client.model import DomainStatus
from engine_client.passreport import PassReport
from engine_client.updater import Updater
from stream import ovfread
from stream.wire.tarread import index
from tests.stream.daemon import Daemon, free_port
from volume.base import read_exactly
from volume.filedomain import open_file_domain

from .clusters import Cluster, Member, add, stored
from .conftest import SilentHost
from .ovfs import DiskSpec


def host_status(m: Member) -> str | None:
    """The domain's status in the map its host holds (None: not in it)."""
    status, body = m.daemon.request("GET", "/pool")
    assert status == 200, body
    found = json.loads(body)["domains"].get(m.sd)
    return None if found is None else str(found["status"])


def on_storage(m: Member) -> set[str]:
    """The entities in the domain's newest store, read from its directory
    (the host no longer serves a detached domain)."""
    state, vol = ovfread.newest(open_file_domain(m.daemon.domain))
    with closing(vol):
        assert state.record is not None
        data = bytearray(state.record.tar_length)
        read_exactly(vol, 0, memoryview(data))
    return {e.name[:-4] for e in index(data) if e.name.endswith(".ovf")}


@pytest.fixture
async def flows(cache: Cache, cfg: Config) -> AsyncIterator[Flows]:
    f = Flows(cache, cfg)
    yield f
    await f.close()


async def test_maintenance_refreshes_the_store_first(cache: Cache, flows: Flows,
                                                     cluster: Cluster) -> None:
    a, b = await cluster(2)
    assert cache.pool().master_domain == a.sd
    vm = add(cache, "vm1", [DiskSpec(a.sd)])
    report = await flows.maintenance(a.sd)
    assert report.ok and report.status == "Maintenance" and not report.forced
    steps = report.steps
    assert steps[0].startswith("PreparingForMaintenance; map pushed to ")
    assert steps[1].startswith("OVF store refreshed on host h0") and steps[1].endswith(", 1 OVF")
    assert steps[2] == f"master role handed over to domain {b.sd}"
    assert steps[3].startswith("Maintenance; map pushed to ")
    assert cache.pool().master_domain == b.sd
    assert cache.domain(a.sd).status == DomainStatus.MAINTENANCE
    assert host_status(a) == "Maintenance"
    store = await stored(a)  # refreshed while the host still took writes
    assert set(store.ovfs) == {vm}
    assert report.refresh is not None and store.generation == report.refresh.generation


async def test_a_failed_refresh_stops_unless_forced(cache: Cache, flows: Flows,
                                                    cluster: Cluster) -> None:
    a, b = await cluster(2)
    add(cache, "vm1", [DiskSpec(a.sd)])
    # The host is down, as far as the engine can tell.
    cache.add_host("h0", f"http://127.0.0.1:{free_port()}", a.daemon.token, [a.sd])
    with pytest.raises(FlowFailed) as e:
        await flows.maintenance(a.sd)
    assert cache.pool().master_domain == a.sd  # it never left
    assert f"storage domain {a.sd} stays Active: refreshing its OVF store failed" in str(e.value)
    assert "use --force" in str(e.value)
    assert e.value.report.status == "Active" and not e.value.report.ok
    assert cache.domain(a.sd).status == DomainStatus.ACTIVE
    report = await flows.maintenance(a.sd, force=True)
    assert report.ok and report.forced and report.status == "Maintenance"
    assert cache.pool().master_domain == b.sd
    assert report.refresh is not None and report.refresh.outcome == "failed"
    assert cache.domain(a.sd).status == DomainStatus.MAINTENANCE


async def test_a_pass_of_the_running_updater_counts_as_the_refresh(
        cache: Cache, cfg: Config, flows: Flows, cluster: Cluster,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`sluice-engine run`'s own pass may push the store between the flow's
    mark and the flow's pass, which then has nothing left to push."""
    (a,) = await cluster(1)
    vm = add(cache, "vm1", [DiskSpec(a.sd)])
    running = Updater(cache, cfg)
    own = flows._updater.run_once

    async def after_the_other(retry_now: bool = False, only: str | None = None) -> PassReport:
        await running.run_once()
        return await own(retry_now=retry_now, only=only)
    monkeypatch.setattr(flows._updater, "run_once", after_the_other)
    try:
        report = await flows.maintenance(a.sd)
    finally:
        await running.close()
    assert report.ok and report.status == "Maintenance"
    assert report.refresh is not None and report.refresh.detail == "by another pass"
    assert report.refresh.outcome == "updated" and report.refresh.host == "h0"
    assert set((await stored(a)).ovfs) == {vm}


@dataclass
class FakeHost:
    """One host as a tiny server: it takes maps and pushes, and answers
    ``ovf-store/info`` with ``copied(pushed generations, calls)``: each
    store's generation (None: no store yet) and whether it is updating."""

    sd: str
    pool: dict[str, Any]
    pushed: list[int] = field(default_factory=list)
    info_calls: int = 0


Copied = Callable[[list[int], int], tuple[list[int], bool]]


async def fake_host(cache: Cache, sd: str, aiohttp_server: Any, copied: Copied,
                    info_delay: float = 0.0) -> FakeHost:
    """``info_delay``: seconds ``info`` waits before it answers, as a host
    waits for copies that are running."""
    host = FakeHost(sd, {"pool_id": cache.pool().pool_id, "map_version": 0, "domains": {}})

    async def info(request: web.Request) -> web.Response:
        return web.json_response({"server": "sluice", "features": ["ovf-store"]})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(host.pool)

    async def put_pool(request: web.Request) -> web.Response:
        host.pool.update(await request.json())
        return web.json_response({**host.pool, "changed": True})

    async def store_info(request: web.Request) -> web.Response:
        host.info_calls += 1
        await asyncio.sleep(info_delay)
        generations, updating = copied(host.pushed, host.info_calls)
        stores = [{"index": i, "valid": True, "ovfs": 1,
                   "record": {"generation": g, "updating": False}}
                  for i, g in enumerate(generations)]
        return web.json_response({"sd_uuid": sd, "stores": stores, "updating": updating,
                                  "copy_errors": [] if len(set(generations)) < 2 else
                                  ["store 1 keeps its previous archive"]})

    async def put_store(request: web.Request) -> web.Response:
        body = await request.read()
        host.pushed.append(len(host.pushed) + 2)
        return web.json_response({"generation": host.pushed[-1], "tar_length": len(body),
                                  "digest": xxhash.xxh3_128_hexdigest(body)})

    app = web.Application()
    app.router.add_get("/info/", info)
    app.router.add_get("/stats", stats)
    app.router.add_put("/pool", put_pool)
    app.router.add_get("/domains/{sd}/ovf-store/info", store_info)
    app.router.add_put("/domains/{sd}/ovf-store", put_store)
    server = await aiohttp_server(app)
    cache.add_host("h0", f"http://127.0.0.1:{server.port}", "token", [sd])
    add(cache, "vm1", [DiskSpec(sd)])
    return host


async def test_the_domain_leaves_only_once_every_store_holds_the_refresh(
        cache: Cache, flows: Flows, add_domain: Callable[..., str],
        aiohttp_server: Any) -> None:
    """A host answers a push once one store is committed, and copies it into
    the others after; the Maintenance map that follows at once stops those
    copies.  The flow waits for them (``info`` does) and checks that every
    store holds the refreshed generation, as oVirt rewrites every store
    before it lets the domain go."""
    sd = add_domain()

    def one_store_only(pushed: list[int], calls: int) -> tuple[list[int], bool]:
        return ([pushed[-1], pushed[-1] - 1] if pushed else []), False
    host = await fake_host(cache, sd, aiohttp_server, one_store_only)
    with pytest.raises(FlowFailed) as e:
        await flows.maintenance(sd)
    assert f"storage domain {sd} stays Active" in str(e.value)
    assert "not into every store: store 1 holds generation 1" in str(e.value)
    assert cache.domain(sd).status == DomainStatus.ACTIVE
    assert host.pool["domains"][sd]["status"] == "Active"
    report = await flows.maintenance(sd, force=True)
    assert report.ok and report.forced and report.status == "Maintenance"


async def test_a_flow_waits_for_copies_still_running(
        cache: Cache, flows: Flows, add_domain: Callable[..., str], aiohttp_server: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A host whose copies outlast ``info``'s own wait answers "updating":
    the flow asks again (up to COPY_WAIT) rather than fail a refresh that
    is only slow; copies that never end fail it, saying so."""
    monkeypatch.setattr(flows_module, "COPY_POLL", 0.01)
    sd = add_domain()

    def slow(pushed: list[int], calls: int) -> tuple[list[int], bool]:
        if not pushed:
            return [], False
        done = calls > 4  # the check before the push, then 3 answers "updating"
        return [pushed[-1], pushed[-1] if done else pushed[-1] - 1], not done
    host = await fake_host(cache, sd, aiohttp_server, slow)
    report = await flows.maintenance(sd)
    assert report.ok and report.status == "Maintenance" and not report.forced
    assert host.info_calls == 5

    sd = add_domain()
    monkeypatch.setattr(flows_module, "COPY_WAIT", 0.1)

    def stuck(pushed: list[int], calls: int) -> tuple[list[int], bool]:
        return ([pushed[-1], pushed[-1] - 1] if pushed else []), bool(pushed)
    await fake_host(cache, sd, aiohttp_server, stuck)
    with pytest.raises(FlowFailed, match="the host was still copying it into the other "
                                         "stores after 0 s"):
        await flows.maintenance(sd)
    assert cache.domain(sd).status == DomainStatus.ACTIVE


async def test_info_may_take_longer_than_the_request_timeout(
        cache: Cache, cfg: Config, flows: Flows, add_domain: Callable[..., str],
        aiohttp_server: Any) -> None:
    """The host's info waits for running copies before it answers: a short
    ``http.request_timeout`` must not cut that wait off and fail the flow."""
    cfg.http.request_timeout = 0.5
    sd = add_domain()

    def copied(pushed: list[int], calls: int) -> tuple[list[int], bool]:
        return ([pushed[-1]] * 2 if pushed else []), False
    host = await fake_host(cache, sd, aiohttp_server, copied, info_delay=1.0)
    report = await flows.maintenance(sd)
    assert report.ok and report.status == "Maintenance" and not report.forced
    assert host.info_calls == 2  # before the push, and after it


async def test_a_host_that_answers_nothing_is_waited_for_once(
        cache: Cache, cfg: Config, flows: Flows, cluster: Cluster,
        silent_host: SilentHost) -> None:
    """A frozen host (it takes the connection, answers nothing) costs the
    flow one timeout: it is not sent the map once its stats went
    unanswered, and the later steps skip it, saying so."""
    cfg.http.request_timeout = 0.5
    (a,) = await cluster(1)
    cache.add_host("frozen", silent_host.url, "t", [])
    report = await flows.maintenance(a.sd)
    assert report.ok and report.status == "Maintenance"
    assert report.silent_hosts == ["frozen"]
    assert silent_host.requests() == ["GET /stats"]
    assert "not to frozen (unreachable: GET /stats: no answer within 0.5 s)" in report.steps[0]
    assert report.steps[-1].endswith("not to frozen (unreachable: skipped: it answered "
                                     "nothing earlier in this flow)")
    assert host_status(a) == "Maintenance"


def stuck_in_refresh(flows: Flows, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Make ``flows``' refreshes wait until the returned event is set."""
    go = asyncio.Event()
    refresh = flows._refresh

    async def waiting(report: FlowReport) -> bool:
        await go.wait()
        return await refresh(report)
    monkeypatch.setattr(flows, "_refresh", waiting)
    return go


async def until_status(cache: Cache, sd: str, status: DomainStatus) -> None:
    for _ in range(200):
        if cache.domain(sd).status == status:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the domain never became {status}")


async def test_a_resumed_maintenance_goes_back_where_the_first_run_found_it(
        cache: Cache, cfg: Config, flows: Flows, cluster: Cluster,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Inactive -> maintenance, cut short (the engine stopped) while
    PreparingForMaintenance; the run that resumes it fails its refresh:
    the domain goes back to Inactive, not Active."""
    (a,) = await cluster(1)
    add(cache, "vm1", [DiskSpec(a.sd)])
    cache.set_domain_status(a.sd, DomainStatus.INACTIVE)
    stuck_in_refresh(flows, monkeypatch)
    first = asyncio.ensure_future(flows.maintenance(a.sd))
    await until_status(cache, a.sd, DomainStatus.PREPARING_FOR_MAINTENANCE)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first

    # Setting the status it has keeps where the flow found it.
    cache.set_domain_status(a.sd, DomainStatus.PREPARING_FOR_MAINTENANCE)
    # The cancelled flow let go of the domain's flow lock.
    lock = passlock.try_lock(str(Path(cfg.state_dir) / f"flow-{a.sd}.lock"))
    assert lock is not None
    passlock.release(lock)
    cache.add_host("h0", f"http://127.0.0.1:{free_port()}", a.daemon.token, [a.sd])  # down
    again = Flows(cache, cfg)
    try:
        with pytest.raises(FlowFailed, match=f"storage domain {a.sd} stays Inactive: "):
            await again.maintenance(a.sd)
    finally:
        await again.close()
    assert cache.domain(a.sd).status == DomainStatus.INACTIVE


async def test_one_flow_at_a_time_on_a_domain(cache: Cache, cfg: Config, flows: Flows,
                                              cluster: Cluster,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A second flow on a domain whose flow is running is refused before
    it changes anything, even one that would look like a resumed run, and
    so is ``domain set-status``;
    another domain's flow runs meanwhile, and once the first flow ends
    the domain is free again."""
    a, b = await cluster(2)
    add(cache, "vm1", [DiskSpec(a.sd)])
    go = stuck_in_refresh(flows, monkeypatch)
    first = asyncio.ensure_future(flows.maintenance(a.sd))
    await until_status(cache, a.sd, DomainStatus.PREPARING_FOR_MAINTENANCE)
    other = Flows(cache, cfg)  # another engine process, as far as the lock can tell
    try:
        busy = (f"a maintenance, activate or detach of storage domain {a.sd} is running; "
                "wait for it to end")
        for second in (other.maintenance(a.sd), other.activate(a.sd)):
            with pytest.raises(InvalidInput, match=busy):
                await second
        # Nor is a status set by hand under it (the CLI runs its own loop).
        argv = ["--state-dir", cfg.state_dir, "domain", "set-status", a.sd, "Active"]
        assert await asyncio.to_thread(cli.main, argv) == 2
        assert busy in capsys.readouterr().err
        assert cache.domain(a.sd).status == DomainStatus.PREPARING_FOR_MAINTENANCE
        assert (await other.maintenance(b.sd)).status == "Maintenance"
        go.set()
        assert (await first).status == "Maintenance"
        assert (await other.activate(a.sd)).status == "Active"
    finally:
        await other.close()


async def test_activation_brings_the_store_up_to_date(cache: Cache, flows: Flows,
                                                      cluster: Cluster) -> None:
    (a,) = await cluster(1)
    vm1 = add(cache, "vm1", [DiskSpec(a.sd)])
    await flows.maintenance(a.sd)
    vm2 = add(cache, "vm2", [DiskSpec(a.sd)])  # imported while the domain was away
    with pytest.raises(InvalidInput, match="is Maintenance; maintenance starts from Active"):
        await flows.maintenance(a.sd)
    report = await flows.activate(a.sd)
    assert report.ok and report.status == "Active"
    assert [s.split(";")[0] for s in report.steps[:2]] == ["Activating", "Active"]
    assert host_status(a) == "Active"
    assert set((await stored(a)).ovfs) == {vm1, vm2}
    with pytest.raises(InvalidInput, match="is Active; activate starts from Maintenance"):
        await flows.activate(a.sd)


async def test_detach_takes_the_domain_and_its_vms_out(cache: Cache, flows: Flows,
                                                        cluster: Cluster) -> None:
    a, b = await cluster(2)
    alone = add(cache, "alone", [DiskSpec(a.sd)])
    spread = add(cache, "spread", [DiskSpec(a.sd), DiskSpec(b.sd)])
    stays = add(cache, "stays", [DiskSpec(b.sd)])
    with pytest.raises(InvalidInput, match="is Active; detach starts from Maintenance"):
        await flows.detach(a.sd)
    await flows.maintenance(a.sd)
    with pytest.raises(InvalidInput, match=f"1 VMs or templates have disks on it and on "
                                           f"other domains \\(the first, {spread}"):
        await flows.detach(a.sd)
    assert cache.domain(a.sd).status == DomainStatus.MAINTENANCE  # refused before any step
    (disk,) = [d.disk_uuid for d in cache.disks(spread) if d.sd_uuid == a.sd]
    cache.set_disk(spread, disk, b.sd)
    report = await flows.detach(a.sd)
    assert report.ok and report.status is None and report.dropped == [alone]
    assert report.steps[0].startswith("Detaching; ")
    assert report.steps[-1].startswith("left the pool with 1 VMs and templates; map pushed")
    assert {e.uuid for e in cache.entities()} == {spread, stays}
    assert [d.uuid for d in cache.domains()] == [b.sd]
    assert host_status(a) is None  # h0 got a map without it
    # The domain alone carries what left with it: refreshed while Detaching.
    assert on_storage(a) == {alone}  # spread moved its disk away before


def test_cli_flows(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "host" / "data")
    try:
        sd = Path(d.domain).name
        state = str(tmp_path / "engine")
        base = ["--state-dir", state]
        assert cli.main([*base, "host", "add", "h0", f"http://127.0.0.1:{d.port}",
                         "--token", d.token]) == 0
        assert cli.main([*base, "domain", "add", sd, "--type", "file", "--location",
                         d.domain.rstrip("/"), "--host", "h0"]) == 0
        assert cli.main([*base, "domain", "maintenance", sd]) == 0
        assert cli.main([*base, "domain", "detach", "--json", sd]) == 0
        assert cli.main([*base, "domain", "activate", sd]) == 2  # gone
    finally:
        d.stop()


def test_cli_flow_failure_is_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    state = str(tmp_path / "engine")
    sd = "8f0c5c8e-7a36-4a5e-9d0b-2f1d0c4e9a11"
    base = ["--state-dir", state]
    assert cli.main([*base, "host", "add", "h0", f"http://127.0.0.1:{free_port()}",
                     "--token", "t"]) == 0
    assert cli.main([*base, "domain", "add", sd, "--type", "file", "--location",
                     str(tmp_path), "--host", "h0"]) == 0
    capsys.readouterr()
    assert cli.main([*base, "domain", "maintenance", "--json", sd]) == 1
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["status"] == "Active" and report["ok"] is False
    assert report["refresh"]["outcome"] == "failed"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sluice-engine: storage domain {sd} stays "
                                                   "Active: refreshing its OVF store failed")


def test_detach_in_the_cache(cache: Cache, add_domain: Callable[..., str]) -> None:
    a, b, c = add_domain(), add_domain(), add_domain(status="Maintenance")
    assert cache.pool().master_domain == a
    vm = add(cache, "vm", [DiskSpec(b)])
    cache.process_entities(cache.outdated_entities("", 100))
    content = cache.store_content(b)
    assert cache.store_pushed(content, 1, "0" * 32, 10240, "h0", 0.0, 0.0)  # b lists vm
    (disk,) = cache.disks(vm)
    cache.set_disk(vm, disk.disk_uuid, a)  # not processed: b still lists it
    assert not cache.store(b).outdated
    version = cache.pool().map_version
    assert cache.detach_domain(a) == [vm]
    assert cache.entities() == []
    assert cache.store(b).outdated  # the next pass takes vm out of b's store
    assert not cache.store(b).stored
    pool = cache.pool()
    assert pool.master_domain == b and pool.map_version == version + 1  # Active before c
    assert sorted(d.uuid for d in cache.domains()) == sorted([b, c])
    with pytest.raises(NotFound):
        cache.store(a)
    cache.detach_domain(b)
    assert cache.pool().master_domain == c  # no Active one left: any other
    cache.detach_domain(c)
    assert cache.pool().master_domain is None
