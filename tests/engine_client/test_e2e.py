"""The updater against real ``sluice serve`` daemons: what the hosts store is
read back over their API and compared with the engine cache."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from engine_client.cache import Cache
from engine_client.config import Config
from engine_client.model import DomainStatus, VmStatus
from engine_client.ovf import parse
from engine_client.poolsync import PoolSync
from engine_client.updater import Updater
from tests.stream.daemon import Daemon, free_port
from volume.filedomain import open_file_domain
from volume.ovfstore import OvfStores

from .clusters import Cluster, Member, add, cached, get, stored
from .ovfs import DiskSpec, vm_ovf, write


async def test_updates_through_changes(cache: Cache, updater: Updater, cluster: Cluster) -> None:
    a, b = await cluster(2)
    disk1 = DiskSpec(a.sd)
    vm1 = add(cache, "vm1", [disk1])
    vm2 = add(cache, "vm2", [DiskSpec(b.sd)])
    tpl = add(cache, "tpl", [DiskSpec(a.sd)], template=True)
    vm3 = add(cache, "diskless", [])
    shared_disk = DiskSpec(a.sd, shareable=True)
    shared = add(cache, "shared-only", [shared_disk])  # in every store, as vm3
    cache.set_status(vm2, VmStatus.UP)
    cache.set_status(tpl, VmStatus.UP)  # templates never go into "VM Status"

    r = await updater.run_once()
    assert r.ok and {d.sd_uuid: d.outcome for d in r.domains} == {a.sd: "updated",
                                                                    b.sd: "updated"}
    sa, sb = await stored(a), await stored(b)
    assert set(sa.ovfs) == {vm1, tpl, vm3, shared} and set(sb.ovfs) == {vm2, vm3, shared}
    assert all(data == cached(cache, vm) for s in (sa, sb) for vm, data in s.ovfs.items())
    assert (sa.vm_status, sb.vm_status) == ({}, {vm2: 1})
    for m, s in ((a, sa), (b, sb)):
        state = cache.store(m.sd)
        assert not state.outdated and (state.generation, state.digest) == (s.generation,
                                                                           s.digest)
        assert state.stored == set(s.ovfs) and state.host == m.host

    r = await updater.run_once()
    assert r.domains == [], "nothing changed: nothing pushed"

    cache.set_disk(vm1, disk1.disk, b.sd)  # move the disk to the other domain
    r = await updater.run_once()
    assert {d.sd_uuid: d.outcome for d in r.domains} == {a.sd: "updated", b.sd: "updated"}
    sa, sb = await stored(a), await stored(b)
    assert vm1 not in sa.ovfs and vm1 in sb.ovfs
    assert parse(sb.ovfs[vm1]).disks[0].sd_uuid == b.sd
    assert (await get(a, f"/domains/{a.sd}/ovf-store/{vm1}.ovf"))[0] == 404
    assert (await get(b, f"/domains/{b.sd}/ovf-store/{vm1}.ovf"))[1] == sb.ovfs[vm1]

    old = sb.ovfs[vm2]
    cache.set_locked(vm2, True)
    add(cache, "vm2-renamed", [DiskSpec(b.sd)], vm=vm2)
    r = await updater.run_once()
    assert [o.uuid for o in r.skipped] == [vm2] and r.domains == []
    assert (await stored(b)).ovfs[vm2] == old, "the old OVF stays while locked"
    cache.set_locked(vm2, False)
    r = await updater.run_once()
    assert [d.sd_uuid for d in r.domains] == [b.sd]
    assert parse((await stored(b)).ovfs[vm2]).name == "vm2-renamed"

    cache.set_disk(shared, shared_disk.disk, shareable=False)  # a disk of its own now
    r = await updater.run_once()
    assert {d.sd_uuid: d.outcome for d in r.domains} == {a.sd: "updated", b.sd: "updated"}
    assert shared in (await stored(a)).ovfs and shared not in (await stored(b)).ovfs
    cache.set_disk(shared, shared_disk.disk, shareable=True)  # back in every store
    r = await updater.run_once()
    assert {d.sd_uuid: d.outcome for d in r.domains} == {a.sd: "updated", b.sd: "updated"}
    assert shared in (await stored(b)).ovfs

    cache.delete_entity(tpl)
    r = await updater.run_once()
    assert [d.sd_uuid for d in r.domains] == [a.sd]
    assert set((await stored(a)).ovfs) == {vm3, shared}


async def test_several_hosts_one_down(cache: Cache, cfg: Config, updater: Updater,
                                      cluster: Cluster, tmp_path: Path) -> None:
    cfg.updater.concurrency = 2
    members = await cluster(3)
    lost = str(uuid.uuid4())
    (tmp_path / "lost").mkdir()
    cache.add_domain(lost, "file", [str(tmp_path / "lost")])
    cache.add_host("gone", f"http://127.0.0.1:{free_port()}", "t", [lost])
    vms = {m.sd: [add(cache, f"{m.host}-{i}", [DiskSpec(m.sd)]) for i in range(20)]
           for m in members}
    add(cache, "on-lost", [DiskSpec(lost)])
    r = await updater.run_once()
    outcomes = {d.sd_uuid: d.outcome for d in r.domains}
    assert outcomes == {**{m.sd: "updated" for m in members}, lost: "failed"}
    for m in members:
        assert set((await stored(m)).ovfs) == set(vms[m.sd])
    assert cache.store(lost).outdated and cache.store(lost).generation is None


async def test_host_errors_mark_nothing(cache: Cache, cfg: Config, updater: Updater,
                                        cluster: Cluster) -> None:
    (m,) = await cluster(1)
    add(cache, "vm", [DiskSpec(m.sd)])
    cache.add_host(m.host, m.url, "wrong-token", [m.sd])
    r = await updater.run_once()
    (d,) = r.domains
    assert d.outcome == "failed"
    assert d.detail == (f"could not check the domain's existing OVF store: host {m.host}: "
                        f"GET /domains/{m.sd}/ovf-store/info answered 401 unauthorized: this "
                        "route needs the engine's credential")
    cache.add_host(m.host, m.url, m.daemon.token, [m.sd])
    # The host's map says Maintenance: it refuses the write with 409.
    cache.set_domain_status(m.sd, DomainStatus.MAINTENANCE)
    sync = PoolSync(cache, cfg)
    try:
        await sync.sync_once()
        cache.set_domain_status(m.sd, DomainStatus.ACTIVE)
        r = await updater.run_once(retry_now=True)
        (d,) = r.domains
        assert d.outcome == "failed" and "answered 409 domain-not-available" in (d.detail or "")
        s = cache.store(m.sd)
        assert s.outdated and s.generation is None and s.failures == 2
        assert (await get(m, f"/domains/{m.sd}/ovf-store"))[0] != 200
        await sync.sync_once()
    finally:
        await sync.close()
    r = await updater.run_once(retry_now=True)
    assert [d.outcome for d in r.domains] == ["updated"]
    assert cache.store(m.sd).failures == 0


async def test_stores_restored_to_an_older_generation(
        cache: Cache, cfg: Config, updater: Updater, cluster: Cluster, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """The domain's files restored from a backup (a storage snapshot): its
    stores go back in generation.  The next push lands and is what they hold
    now: updated at the host's generation, with a warning, and not pushed
    again and again as if each answer were an old one come late."""
    (m,) = await cluster(1)
    vm = add(cache, "vm", [DiskSpec(m.sd)])
    assert (await updater.run_once()).ok
    data, backup = m.daemon.data_dir, tmp_path / "backup"
    started: list[Daemon] = []

    async def restart(restore: bool) -> Member:
        """Stop the host, restore the domain's files if asked, start it again."""
        m.daemon.stop()
        if restore:
            shutil.rmtree(data / "domains")
            shutil.copytree(backup, data / "domains", symlinks=True)
        else:
            shutil.copytree(data / "domains", backup, symlinks=True)
        m.daemon = await asyncio.to_thread(Daemon, data)
        started.append(m.daemon)
        cache.add_host(m.host, m.url, m.daemon.token, [m.sd])
        sync = PoolSync(cache, cfg)
        try:
            assert {r.state for r in await sync.sync_once()} == {"pushed"}
        finally:
            await sync.close()
        return m

    try:
        await restart(restore=False)  # the backup, at generation 1
        for _ in range(4):
            cache.mark_outdated(m.sd)
            assert (await updater.run_once()).ok
        assert cache.store(m.sd).generation == 5
        await restart(restore=True)
        assert (await stored(m)).generation == 1
        add(cache, "vm-renamed", [DiskSpec(m.sd)], vm=vm)
        with caplog.at_level(logging.WARNING, "engine_client"):
            (d,) = (await updater.run_once()).domains
        assert (d.outcome, d.detail, d.generation) == ("updated", None, 2)
        s, on_host = cache.store(m.sd), await stored(m)
        assert not s.outdated and (s.generation, s.digest) == (2, on_host.digest) == (
            on_host.generation, d.digest)
        assert parse(on_host.ovfs[vm]).name == "vm-renamed"
        assert (f"the OVF stores of domain {m.sd} went back in generation: host {m.host} "
                "wrote generation 2 after generation 5 (restored from a snapshot or a "
                "backup?)") in caplog.text
        assert (await updater.run_once()).domains == [], "pushed once, not again"
    finally:
        for daemon in started:
            daemon.stop()


async def test_a_store_left_without_its_copy_is_pushed_again(
        cache: Cache, updater: Updater, cluster: Cluster) -> None:
    """A copy cut off after the answer (the daemon killed while copying)
    leaves one store marked updating: the next pass sees it, though
    nothing changed, and pushes the archive again, so the domain holds
    two good copies again."""
    (m,) = await cluster(1)
    add(cache, "vm", [DiskSpec(m.sd)])
    assert (await updater.run_once()).ok
    assert (await updater.run_once()).domains == [], "nothing changed, nothing missing"
    # As an update whose copy was cut off: the store it wrote marked updating.
    domain = open_file_domain(str(m.daemon.data_dir / "domains" / m.sd))
    OvfStores.open(domain).begin().abort()
    status, body, _ = await get(m, f"/domains/{m.sd}/ovf-store/info")
    states = json.loads(body)["stores"]
    assert status == 200 and sorted(s["valid"] for s in states) == [False, True]
    broken = next(s["index"] for s in states if not s["valid"])

    (d,) = (await updater.run_once()).domains
    assert (d.outcome, d.generation) == ("updated", 2), d
    assert d.detail is not None and d.detail.startswith(
        f"pushed again: store {broken} is not valid (")
    assert d.detail.endswith(f"not generation 1 this engine pushed to domain {m.sd}")
    _, body, _ = await get(m, f"/domains/{m.sd}/ovf-store/info")
    assert [(s["valid"], s["record"]["generation"]) for s in json.loads(body)["stores"]] \
        == [(True, 2), (True, 2)]
    assert cache.store(m.sd).generation == 2
    assert (await updater.run_once()).domains == [], "repaired once, not again"


@pytest.mark.parametrize("zstd", [True, False], ids=["zstd", "plain"])
async def test_compression(cache: Cache, cfg: Config, updater: Updater, cluster: Cluster,
                           zstd: bool) -> None:
    cfg.http.zstd = zstd
    (m,) = await cluster(1)
    for i in range(30):
        add(cache, f"vm{i}", [DiskSpec(m.sd)])
    (d,) = (await updater.run_once()).domains
    assert d.outcome == "updated" and d.zstd is zstd
    assert d.sent is not None and d.tar_length is not None
    assert (d.sent < d.tar_length / 4) if zstd else (d.sent == d.tar_length)
    assert (await stored(m)).digest == d.digest


def test_run_and_trigger_now(cache: Cache, cfg: Config, daemons: Callable[[], Daemon],
                             tmp_path: Path) -> None:
    """``sluice-engine run``: the pool map, a first pass, SIGUSR1 for another, SIGTERM."""
    d = daemons()
    sd = Path(d.domain).name
    cache.add_domain(sd, "file", [d.domain.rstrip("/")])
    cache.add_host("h0", f"http://127.0.0.1:{d.port}", d.token, [sd])
    vm = add(cache, "vm", [DiskSpec(sd)])
    log = open(tmp_path / "run.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "engine_client", "--state-dir",
                             cfg.state_dir, "run"], stdout=log, stderr=subprocess.STDOUT)
    try:
        def wait(what: Callable[[], bool]) -> None:
            deadline = time.monotonic() + 30
            while not what():
                assert proc.poll() is None, (tmp_path / "run.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()
                time.sleep(0.1)

        wait(lambda: cache.store(sd).stored == {vm} and not cache.store(sd).outdated)
        other = str(uuid.uuid4())
        write(tmp_path / "more", other, vm_ovf(other, "other", [DiskSpec(sd)]))
        subprocess.run([sys.executable, "-m", "engine_client", "--state-dir", cfg.state_dir,
                        "vm", "import", str(tmp_path / "more")], check=True,
                       capture_output=True)
        time.sleep(0.5)
        assert other not in cache.store(sd).stored, "the next pass is an hour away"
        os.kill(proc.pid, signal.SIGUSR1)
        wait(lambda: cache.store(sd).stored == {vm, other})
        assert cache.host_sync("h0").pushed_version == cache.pool().map_version
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        log.close()
