"""Disks across storage domains against two real ``sluice serve`` daemons.

Host h0 serves file domain F1 (and a block domain on a loop device, when
the test asks for one), host h1 serves file domain F2.  Data is checked by
downloading it back and comparing bytes (or ``qemu-img compare``), OVF
stores by reading them back from the hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine_client import diskdelete, disks, transfers
from engine_client.cache import Cache
from engine_client.config import Config
from engine_client.diskmove import copy_disk
from engine_client.disks import Ctx, DiskError
from engine_client.errors import EngineError, HostError
from engine_client.hostapi import Clients
from engine_client.hostvol import get_job
from engine_client.ovf import parse
from engine_client.poolsync import PoolSync
from engine_client.updater import Updater
from engine_client.vms import NewDisk, create_vm
from tests.relay import TcpRelay
from tests.stream.daemon import Daemon

from .clusters import Member, stored

MiB = 1 << 20


@dataclass
class World:
    cache: Cache
    cfg: Config
    ctx: Ctx
    a: Daemon
    b: Daemon
    f1: str
    f2: str
    events: list[dict[str, Any]]
    tmp: Path

    async def push(self) -> None:
        sync = PoolSync(self.cache, self.cfg)
        try:
            assert {r.state for r in await sync.sync_once(force=True)} == {"pushed"}
        finally:
            await sync.close()

    def host_url(self, name: str, port: int) -> None:
        h = self.cache.host(name)
        self.cache.add_host(name, f"http://127.0.0.1:{port}", h.token, h.domains)

    async def block_domain(self, loop_device: Any) -> str:
        dev = loop_device(256 * MiB)
        sd = "0b10c000-0000-4000-8000-000000000001"
        status, body = self.a.request("POST", "/domains", {
            "uuid": sd, "type": "block", "location": [dev], "ovf_stores": 1,
            "ovf_store_size": 8 * MiB})
        assert status == 201, body
        self.cache.add_domain(sd, "block", [dev])
        h0 = self.cache.host("h0")
        self.cache.add_host("h0", h0.url, h0.token, [*h0.domains, sd])
        await self.push()
        return sd

    async def upload(self, path: Path, sd: str) -> str:
        opened = await transfers.open_upload(self.ctx, str(path), sd, None)
        try:
            await asyncio.to_thread(transfers.run, opened, str(path), True, lambda n: None,
                                    None)
        finally:
            await transfers.close(self.ctx, opened)
        await transfers.complete(self.ctx, opened)  # as the CLI does once verified
        return opened.ref.img_uuid

    async def download(self, disk: str, sd: str, path: Path) -> dict[str, Any]:
        opened = await transfers.open_download(self.ctx, disk, sd)
        try:
            return await asyncio.to_thread(transfers.run, opened, str(path), False,
                                           lambda n: None, None)
        finally:
            await transfers.close(self.ctx, opened)

    async def volumes(self, sd: str, disk: str | None) -> list[dict[str, Any]]:
        from engine_client.hostvol import list_volumes

        host = next(h for h in self.cache.hosts() if sd in h.domains)
        return await list_volumes(self.ctx.clients(host), sd, disk)

    async def vm_with(self, path: Path, sd: str, name: str = "vm") -> tuple[str, str]:
        disk = await self.upload(path, sd)
        vm = await create_vm(self.ctx, name, [], [(disk, sd)])
        return str(vm["uuid"]), disk


@pytest.fixture
async def world(cache: Cache, cfg: Config, daemons: Callable[[], Daemon],
                tmp_path: Path) -> AsyncIterator[World]:
    cfg.http.read_timeout = 10
    a, b = await asyncio.to_thread(daemons), await asyncio.to_thread(daemons)
    f1, f2 = Path(a.domain).name, Path(b.domain).name
    cache.add_domain(f1, "file", [a.domain.rstrip("/")])
    cache.add_domain(f2, "file", [b.domain.rstrip("/")])
    cache.add_host("h0", f"http://127.0.0.1:{a.port}", a.token, [f1])
    cache.add_host("h1", f"http://127.0.0.1:{b.port}", b.token, [f2])
    events: list[dict[str, Any]] = []
    clients = Clients(cfg.http)
    w = World(cache, cfg, Ctx(cache, clients, events.append, poll=0.05), a, b, f1, f2,
              events, tmp_path)
    await w.push()
    yield w
    await clients.close()


def image(path: Path, size: int, sparse: bool) -> Path:
    with open(path, "wb") as f:
        if sparse:
            f.truncate(size)
            for off in (0, size // 3 + 4096, size - 65536):
                f.seek(off)
                f.write(os.urandom(65536 if off else 2 * MiB))
        else:
            f.write(os.urandom(size))
    return path


def qcow2(raw: Path) -> Path:
    out = raw.with_suffix(".qcow2")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out)],
                   check=True, capture_output=True)
    return out


def same_guest_data(a: Path, fa: str, b: Path, fb: str) -> bool:
    return subprocess.run(["qemu-img", "compare", "-f", fa, "-F", fb, str(a), str(b)],
                          capture_output=True).returncode == 0


async def test_move_across_hosts_updates_both_ovf_stores(world: World) -> None:
    w = world
    src = image(w.tmp / "a.raw", 24 * MiB, sparse=True)
    vm, disk = await w.vm_with(src, w.f1)
    other, _ = await w.vm_with(image(w.tmp / "o.raw", MiB, sparse=False), w.f1, "other")
    updater = Updater(w.cache, w.cfg)
    try:
        assert (await updater.run_once()).ok
        m1, m2 = Member(w.a, w.f1, "h0"), Member(w.b, w.f2, "h1")
        assert vm in (await stored(m1)).ovfs
        summary = await copy_disk(w.ctx, disk, w.f2, move=True)
        assert summary["source_removed"] and summary["host"] == "h1"
        assert summary["bytes_copied"] < 24 * MiB  # holes never travelled
        started = next(e for e in w.events if e["event"] == "started")
        assert started["source_host"] == "h0"  # a remote source, through a ticket
        assert await w.volumes(w.f1, disk) == []
        (dst,) = await w.volumes(w.f2, disk)
        assert dst["legal"] and dst["format"] == "raw"
        result = await w.download(disk, w.f2, w.tmp / "back.raw")
        assert (w.tmp / "back.raw").read_bytes() == src.read_bytes()
        assert result["checksum"] == summary["checksum"]
        assert [d.sd_uuid for d in w.cache.disks(vm)] == [w.f2]
        r = await updater.run_once()
        assert {d.sd_uuid: d.outcome for d in r.domains} == {w.f1: "updated",
                                                              w.f2: "updated"}
        s1, s2 = await stored(m1), await stored(m2)
        assert vm not in s1.ovfs and other in s1.ovfs  # left F1, which keeps the other
        assert parse(s2.ovfs[vm]).disks[0].sd_uuid == w.f2
        again = await copy_disk(w.ctx, disk, w.f2, move=True)
        assert again["already_there"] and not again["source_removed"]
    finally:
        await updater.close()


@pytest.mark.parametrize("fmt,sparse", [("raw", False), ("qcow2", True)],
                         ids=["raw-full", "qcow2-sparse"])
async def test_copy_keeps_source_and_format(world: World, fmt: str, sparse: bool) -> None:
    w = world
    raw = image(w.tmp / "s.raw", 16 * MiB, sparse)
    local = qcow2(raw) if fmt == "qcow2" else raw
    vm, disk = await w.vm_with(local, w.f1)
    summary = await copy_disk(w.ctx, disk, w.f2, move=False)
    assert not summary["source_removed"] and summary["format"] == fmt
    assert len(await w.volumes(w.f1, disk)) == 1  # a copy keeps the source
    for sd in (w.f1, w.f2):
        await w.download(disk, sd, w.tmp / f"{sd}.img")
        assert same_guest_data(raw, "raw", w.tmp / f"{sd}.img", fmt)
    assert [d.sd_uuid for d in w.cache.disks(vm)] == [w.f2]


async def test_a_copy_that_never_ran_leaves_its_destination_incomplete(
        world: World) -> None:
    """The destination was created complete; a job refused (here: a write
    ticket holds the source) or canceled while pending left an empty disk
    that 'vm create --attach' took."""
    w = world
    _, disk = await w.vm_with(image(w.tmp / "n.raw", 4 * MiB, sparse=True), w.f1)
    h1 = w.cache.host("h1")
    w.cache.add_host("h1", h1.url, h1.token, [w.f2, w.f1])  # one host: a local source
    await w.push()
    [vol] = [v["vol_uuid"] for v in await w.volumes(w.f1, disk)]
    writer = str(uuid.uuid4())
    status, body = w.b.request("PUT", f"/tickets/{writer}", {
        "uuid": writer, "size": 4 * MiB, "ops": ["write"], "timeout": 60,
        "sd_id": w.f1, "img_id": disk, "vol_id": vol})
    assert status == 200, body
    with pytest.raises(HostError, match="may write it"):
        await copy_disk(w.ctx, disk, w.f2, move=False)
    assert [v["legal"] for v in await w.volumes(w.f2, disk)] == [False]
    w.b.request("DELETE", f"/tickets/{writer}")
    await copy_disk(w.ctx, disk, w.f2, move=False)  # a retry copies anew into it
    assert [v["legal"] for v in await w.volumes(w.f2, disk)] == [True]


async def test_format_change_needs_a_host_with_both(world: World) -> None:
    w = world
    raw = image(w.tmp / "c.raw", 8 * MiB, sparse=True)
    _, disk = await w.vm_with(raw, w.f1)
    with pytest.raises(DiskError, match="needs one host that serves both domains"):
        await copy_disk(w.ctx, disk, w.f2, move=True, fmt="qcow2")
    assert len(await w.volumes(w.f1, disk)) == 1
    h1 = w.cache.host("h1")  # file domains are shared storage: h1 can serve F1 too
    w.cache.add_host("h1", h1.url, h1.token, [w.f1, w.f2])
    await w.push()
    summary = await copy_disk(w.ctx, disk, w.f2, move=True, fmt="qcow2")
    assert summary["format"] == "qcow2" and summary["verified_with"] == "qemu-img compare"
    await w.download(disk, w.f2, w.tmp / "c.qcow2")
    assert same_guest_data(raw, "raw", w.tmp / "c.qcow2", "qcow2")
    assert await w.volumes(w.f1, disk) == []


async def test_block_domain_pairs(world: World, loop_device: Any) -> None:
    w = world
    blk = await w.block_domain(loop_device)
    raw = image(w.tmp / "b.raw", 20 * MiB, sparse=True)
    _, disk = await w.vm_with(raw, w.f1)
    moved = await copy_disk(w.ctx, disk, blk, move=True)  # same host: a local source
    assert moved["host"] == "h0" and moved["source_removed"]
    copied = await copy_disk(w.ctx, disk, w.f2, move=False)  # block -> file, across hosts
    assert copied["host"] == "h1" and copied["checksum"] == moved["checksum"]
    await w.download(disk, w.f2, w.tmp / "b2.raw")
    assert (w.tmp / "b2.raw").read_bytes() == raw.read_bytes()
    q = qcow2(image(w.tmp / "q.raw", 8 * MiB, sparse=True))
    _, qdisk = await w.vm_with(q, w.f1, "q")
    conv = await copy_disk(w.ctx, qdisk, blk, move=False)  # a block domain holds raw only
    assert conv["format"] == "raw"
    await w.download(qdisk, blk, w.tmp / "q-back.raw")
    assert same_guest_data(w.tmp / "q.raw", "raw", w.tmp / "q-back.raw", "raw")


#: The directions the tests above leave out: (from, to, move, format, sparse).
PAIRS = [
    ("F2", "F1", False, "raw", False),
    ("F2", "F1", True, "qcow2", True),  # a qcow2 move across hosts
    ("B", "F1", False, "raw", False),
    ("B", "F1", True, "raw", True),
    ("F2", "B", False, "raw", True),
    ("F2", "B", True, "raw", False),
    ("B", "F2", True, "raw", True),
    ("F1", "B", True, "raw", False),
]


@pytest.mark.parametrize("frm,to,move,fmt,sparse", PAIRS, ids=[
    f"{f}-{t}-{'move' if m else 'copy'}-{fmt}-{'sparse' if s else 'full'}"
    for f, t, m, fmt, s in PAIRS])
async def test_domain_pairs(world: World, loop_device: Any, frm: str, to: str, move: bool,
                            fmt: str, sparse: bool) -> None:
    w = world
    sds = {"F1": w.f1, "F2": w.f2}
    if "B" in (frm, to):
        sds["B"] = await w.block_domain(loop_device)
    src_sd, dst_sd = sds[frm], sds[to]
    host, source_host = ("h1" if to == "F2" else "h0"), ("h1" if frm == "F2" else "h0")
    raw = image(w.tmp / "p.raw", 6 * MiB, sparse)
    vm, disk = await w.vm_with(qcow2(raw) if fmt == "qcow2" else raw, src_sd)
    before = await w.download(disk, src_sd, w.tmp / "before.img")
    summary = await copy_disk(w.ctx, disk, dst_sd, move=move)
    assert (summary["state"], summary["host"], summary["format"]) == ("done", host, fmt)
    assert summary["verified_with"] == "xxh3_128 block hash"
    assert summary["checksum"] == before["checksum"]
    started = [e for e in w.events if e["event"] == "started"][-1]
    assert (started["host"], started["source_host"]) == (host, source_host)
    job = await get_job(w.ctx.clients(w.cache.host(host)), summary["job"])
    r = job["result"]
    assert job["state"] == "done" and r["checksum"]["checksum"] == before["checksum"]
    assert r["source_checksum"] == r["destination_checksum"] == r["checksum"]
    after = await w.download(disk, dst_sd, w.tmp / "after.img")
    assert after["checksum"] == before["checksum"]
    assert (w.tmp / "after.img").read_bytes() == (w.tmp / "before.img").read_bytes()
    assert same_guest_data(raw, "raw", w.tmp / "after.img", fmt)
    (dst,) = await w.volumes(dst_sd, disk)
    assert dst["legal"] and dst["format"] == fmt
    left = await w.volumes(src_sd, disk)
    assert summary["source_removed"] is move and len(left) == (0 if move else 1)
    assert all(v["legal"] for v in left)
    assert [d.sd_uuid for d in w.cache.disks(vm)] == [dst_sd]


async def test_a_disk_with_snapshots_moves_as_a_chain(world: World, loop_device: Any) -> None:
    w = world
    vm, disk = await w.vm_with(image(w.tmp / "s.raw", 4 * MiB, sparse=True), w.f1)
    (base,) = await w.volumes(w.f1, disk)
    top = str(uuid.uuid4())
    status, body = w.a.request("POST", f"/domains/{w.f1}/volumes", {
        "img_id": disk, "vol_id": top, "size": base["size"], "format": "qcow2",
        "parent": base["vol_uuid"]})
    assert status == 201, body
    top_path = json.loads(body)["path"]
    # The snapshot's own data: a guest write after the snapshot was taken.
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 192k", top_path],
                   check=True, capture_output=True)
    # A block domain holds raw volumes without parents: refused, nothing made.
    blk = await w.block_domain(loop_device)
    with pytest.raises(DiskError, match=f"disk {disk} has 2 volumes \\(snapshots\\); storage "
                                        f"domain {blk} is a block domain"):
        await copy_disk(w.ctx, disk, blk, move=True)
    assert await w.volumes(blk, disk) == []
    rc, out, err = await asyncio.to_thread(finish, cli(w, "disk", "copy", disk, "--to", blk))
    assert rc == 1 and out == "" and err.startswith(f"sluice-engine: disk {disk} has 2 volumes")
    # To the other host's file domain: base then top, each verified.
    copied = await copy_disk(w.ctx, disk, w.f2, move=False)
    assert [v["destination"]["vol_id"] for v in copied["volumes"]] == [base["vol_uuid"], top]
    assert all(v["verified_with"] == "xxh3_128 block hash" for v in copied["volumes"])
    assert copied["bytes_copied"] == sum(v["bytes_copied"] for v in copied["volumes"])
    dst = {v["vol_uuid"]: v for v in await w.volumes(w.f2, disk)}
    assert dst[top]["parent"] == base["vol_uuid"] and dst[top]["format"] == "qcow2"
    assert all(v["legal"] for v in dst.values())
    # What a guest sees through each chain is the same, and the copy's top
    # resolves its parent in its own domain.
    compare = subprocess.run(["qemu-img", "compare", top_path, dst[top]["path"]],
                             capture_output=True, text=True)
    assert compare.returncode == 0, compare.stdout + compare.stderr
    chain = json.loads(subprocess.run(
        ["qemu-img", "info", "--backing-chain", "--output=json", dst[top]["path"]],
        check=True, capture_output=True, text=True).stdout)
    assert [c["filename"] for c in chain] == [dst[top]["path"], dst[base["vol_uuid"]]["path"]]
    assert len(await w.volumes(w.f1, disk)) == 2  # a copy keeps the source
    # And back by a move: into the volumes already there, then the source
    # chain (on F2 now) removed, top first.
    moved = await copy_disk(w.ctx, disk, w.f1, move=True)
    assert moved["source_removed"] and moved["reused_destination"]
    assert await w.volumes(w.f2, disk) == []
    removed = [e["vol_id"] for e in w.events if e.get("event") == "removed"]
    assert removed[-2:] == [top, base["vol_uuid"]]
    assert [d.sd_uuid for d in w.cache.disks(vm)] == [w.f1]


async def test_vm_with_two_disks_across_ovf_stores(world: World, loop_device: Any) -> None:
    w = world
    blk = await w.block_domain(loop_device)
    d1 = await w.upload(image(w.tmp / "1.raw", 2 * MiB, sparse=False), w.f1)
    d2 = await w.upload(image(w.tmp / "2.raw", 4 * MiB, sparse=True), w.f1)
    vm = str((await create_vm(w.ctx, "two", [], [(d1, w.f1), (d2, w.f1)]))["uuid"])
    m1, m2, mb = Member(w.a, w.f1, "h0"), Member(w.b, w.f2, "h1"), Member(w.a, blk, "h0")

    async def where() -> dict[str, dict[str, str | None] | None]:
        """Each domain's stored OVF of the VM: disk -> the domain it names."""
        out: dict[str, dict[str, str | None] | None] = {}
        for m in (m1, m2, mb):
            ovf = (await stored(m)).ovfs.get(vm)
            out[m.sd] = None if ovf is None else {d.disk_uuid: d.sd_uuid
                                                  for d in parse(ovf).disks}
        return out

    updater = Updater(w.cache, w.cfg)
    try:
        assert (await updater.run_once()).ok
        assert await where() == {w.f1: {d1: w.f1, d2: w.f1}, w.f2: None, blk: None}
        assert (await copy_disk(w.ctx, d1, w.f2, move=True))["source_removed"]
        r = await updater.run_once()
        assert {d.sd_uuid: d.outcome for d in r.domains} == {w.f1: "updated",
                                                              w.f2: "updated"}
        both = {d1: w.f2, d2: w.f1}
        assert await where() == {w.f1: both, w.f2: both, blk: None}  # F1 keeps it: d2
        assert (await copy_disk(w.ctx, d2, blk, move=True))["source_removed"]
        r = await updater.run_once()  # F2 too: the VM's OVF there names d2's domain
        assert {d.sd_uuid: d.outcome for d in r.domains} == {
            w.f1: "updated", w.f2: "updated", blk: "updated"}
        now = {d1: w.f2, d2: blk}
        assert await where() == {w.f1: None, w.f2: now, blk: now}
    finally:
        await updater.close()


async def test_vm_on_three_domains_and_from_template(world: World, loop_device: Any) -> None:
    w = world
    blk = await w.block_domain(loop_device)
    vm = await create_vm(w.ctx, "three", [NewDisk(MiB, w.f1), NewDisk(2 * MiB, w.f2, "qcow2"),
                                          NewDisk(3 * MiB, blk)])
    assert {d["sd"] for d in vm["disks"]} == {w.f1, w.f2, blk}
    data = image(w.tmp / "t.raw", 4 * MiB, sparse=False)
    tdisk = await w.upload(data, w.f1)
    tpl = await create_vm(w.ctx, "tpl", [], [(tdisk, w.f1)], as_template=True)
    assert tpl["kind"] == "template"
    clone = await create_vm(w.ctx, "clone", [], template=tpl["uuid"], to=[w.f2])
    (cd,) = clone["disks"]
    assert cd["sd"] == w.f2 and cd["disk"] != tdisk
    await w.download(cd["disk"], w.f2, w.tmp / "clone.raw")
    assert (w.tmp / "clone.raw").read_bytes() == data.read_bytes()
    updater = Updater(w.cache, w.cfg)
    try:
        assert (await updater.run_once()).ok
    finally:
        await updater.close()
    m1, m2 = Member(w.a, w.f1, "h0"), Member(w.b, w.f2, "h1")
    mb = Member(w.a, blk, "h0")
    for m in (m1, m2, mb):
        ovf = parse((await stored(m)).ovfs[vm["uuid"]])
        assert {d.sd_uuid for d in ovf.disks} == {w.f1, w.f2, blk} and ovf.name == "three"
    assert clone["uuid"] in (await stored(m2)).ovfs
    assert clone["uuid"] not in (await stored(m1)).ovfs
    assert tpl["uuid"] in (await stored(m1)).ovfs


class Relay(TcpRelay):
    """TCP to a daemon; while ``stalling`` is set, each connection is held
    after ``limit`` bytes downstream until ``go``; ``kill`` drops everything
    (a host gone)."""

    def __init__(self, port: int, limit: int) -> None:
        self.limit = limit
        self.stalling = threading.Event()
        self.go = threading.Event()
        self.stalled = threading.Event()
        super().__init__(port)

    def _chunk(self, conn: int, down: bool, moved: int, size: int) -> bool:
        if down and moved + size > self.limit and self.stalling.is_set():
            self.stalled.set()
            self.go.wait()
        return True

    def kill(self) -> None:
        self.close()
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self.go.set()


async def _stalled(relay: Relay) -> None:
    for _ in range(400):
        if relay.stalled.is_set():
            return
        await asyncio.sleep(0.025)
    raise AssertionError("the copy never reached the relay's limit")


async def test_source_host_disappears_mid_copy(world: World) -> None:
    w = world
    src = image(w.tmp / "d.raw", 16 * MiB, sparse=False)
    vm, disk = await w.vm_with(src, w.f1)
    relay = Relay(w.a.port, 2 * MiB)
    w.host_url("h0", relay.port)
    relay.stalling.set()
    task = asyncio.create_task(copy_disk(w.ctx, disk, w.f2, move=True))
    await _stalled(relay)
    relay.kill()  # the source host goes away in the middle of the data
    with pytest.raises(DiskError, match="the copy failed on host h1: source") as e:
        await task
    assert "the source is untouched" in str(e.value)
    w.host_url("h0", w.a.port)
    assert len(await w.volumes(w.f1, disk)) == 1
    (dst,) = await w.volumes(w.f2, disk)
    assert not dst["legal"]
    assert [d.sd_uuid for d in w.cache.disks(vm)] == [w.f1]
    summary = await copy_disk(w.ctx, disk, w.f2, move=True)  # the retry finishes
    assert summary["reused_destination"] and summary["source_removed"]
    await w.download(disk, w.f2, w.tmp / "d2.raw")
    assert (w.tmp / "d2.raw").read_bytes() == src.read_bytes()


async def test_checksum_difference_never_removes_the_source(world: World) -> None:
    w = world
    src = image(w.tmp / "x.raw", 16 * MiB, sparse=False)
    _, disk = await w.vm_with(src, w.f1)
    (vol,) = await w.volumes(w.f1, disk)
    relay = Relay(w.a.port, 2 * MiB)
    w.host_url("h0", relay.port)
    relay.stalling.set()
    task = asyncio.create_task(copy_disk(w.ctx, disk, w.f2, move=True))
    await _stalled(relay)
    with open(vol["path"], "r+b") as f:  # the source changes under the copy
        f.write(b"changed!")
    relay.stalling.clear()
    relay.go.set()
    with pytest.raises(DiskError, match="checksum differs"):
        await task
    relay.kill()
    w.host_url("h0", w.a.port)
    assert len(await w.volumes(w.f1, disk)) == 1
    (dst,) = await w.volumes(w.f2, disk)
    assert not dst["legal"]
    started = next(e for e in w.events if e["event"] == "started")
    job = await get_job(w.ctx.clients(w.cache.host("h1")), started["job"])
    assert job["state"] == "failed" and "checksum differs" in job["error"]
    summary = await copy_disk(w.ctx, disk, w.f2, move=True)
    assert summary["source_removed"]


async def test_destination_fills_up(tiny_fs: Path, world: World) -> None:
    w, mnt = world, tiny_fs  # the mount outlives the daemons (fixture order)
    try:
        sd = "71a70000-0000-4000-8000-000000000001"
        status, body = w.b.request("POST", "/domains", {
            "uuid": sd, "type": "file", "location": str(mnt), "ovf_stores": 1,
            "ovf_store_size": MiB})
        assert status == 201, body
        w.cache.add_domain(sd, "file", [str(mnt)])
        w.cache.add_host("h1", w.cache.host("h1").url, w.b.token, [w.f2, sd])
        await w.push()
        src = image(w.tmp / "big.raw", 8 * MiB, sparse=False)
        vm, disk = await w.vm_with(src, w.f1)
        with pytest.raises(DiskError, match="no space left on the storage; the source is "
                                            "untouched"):
            await copy_disk(w.ctx, disk, sd, move=True)
        assert len(await w.volumes(w.f1, disk)) == 1
        (dst,) = await w.volumes(sd, disk)
        assert not dst["legal"]
        started = next(e for e in w.events if e["event"] == "started")
        job = await get_job(w.ctx.clients(w.cache.host("h1")), started["job"])
        assert (job["state"], job["error"]) == ("failed", "no space left on the storage")
        assert [d.sd_uuid for d in w.cache.disks(vm)] == [w.f1]
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        summary = await copy_disk(w.ctx, disk, sd, move=True)
        assert summary["source_removed"] and summary["reused_destination"]
        await w.download(disk, sd, w.tmp / "big2.raw")
        assert (w.tmp / "big2.raw").read_bytes() == src.read_bytes()
    finally:
        await asyncio.to_thread(w.b.stop)  # let go of the mount before unmounting


def cli(w: World, *args: str, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "engine_client", "--state-dir",
                             w.cfg.state_dir, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def finish(p: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=60)
    return p.returncode, out, err


@pytest.mark.parametrize("action", ["upload", "download"])
async def test_output_closed_mid_transfer(world: World, action: str) -> None:
    """``| head -1``: the command stopped without deleting its write
    ticket (the volume stayed in use for an hour; a resume was refused),
    and a download blamed its file for the broken pipe."""
    w = world
    src = image(w.tmp / "pipe.raw", 8 * MiB, sparse=True)
    up = json.loads((await asyncio.to_thread(finish, cli(
        w, "disk", "upload", str(src), "--domain", w.f1, "--json")))[1].splitlines()[-1])
    args = (["upload", str(src), "--domain", w.f1] if action == "upload" else
            ["download", up["disk"], str(w.tmp / "down.raw"), "--domain", w.f1])
    p = cli(w, "disk", *args, "--json")
    assert p.stdout is not None
    first = json.loads(await asyncio.to_thread(p.stdout.readline))
    p.stdout.close()  # as head does after one line
    rc, _, err = await asyncio.to_thread(finish, p)
    assert rc == 141 and "Traceback" not in err and "pipe.raw" not in err, err
    assert err.count("\n") == 1 and "output closed" in err
    disk = first["img_id"] if action == "upload" else up["disk"]
    if action == "upload":
        assert f"run the command again with --disk {disk} to finish it" in err
        # Half written: incomplete, so no copy or attach takes it for a disk.
        assert [v["legal"] for v in await w.volumes(w.f1, disk)] == [False]
        rc, _, err = await asyncio.to_thread(finish, cli(
            w, "vm", "create", "halfway", "--attach", f"{disk}@{w.f1}"))
        assert rc == 1 and "marked incomplete (an unfinished copy or upload)" in err, err
    again = (["upload", str(src), "--domain", w.f1, "--disk", disk] if action == "upload"
             else args)  # the ticket is gone: the volume is free for a writer
    rc, _, err = await asyncio.to_thread(finish, cli(w, "disk", *again))
    assert rc == 0, err
    assert [v["legal"] for v in await w.volumes(w.f1, disk)] == [True]


async def test_ctrl_c_deletes_the_job_and_a_retry_finishes(world: World) -> None:
    w = world
    src = image(w.tmp / "cc.raw", 16 * MiB, sparse=False)
    _, disk = await w.vm_with(src, w.f1)
    relay = Relay(w.a.port, MiB)
    w.host_url("h0", relay.port)
    relay.stalling.set()
    p = cli(w, "disk", "move", disk, "--to", w.f2, "--json")
    assert p.stdout is not None
    started = None
    while started is None:
        line = await asyncio.to_thread(p.stdout.readline)
        assert line, finish(p)
        event = json.loads(line)
        started = event if event["event"] == "started" else None
    await _stalled(relay)
    p.send_signal(signal.SIGINT)
    rc, _, err = await asyncio.to_thread(finish, p)
    assert rc == 1 and err.startswith("sluice-engine: canceled: the copy job was stopped")
    assert err.count("\n") == 1
    job = await get_job(w.ctx.clients(w.cache.host("h1")), started["job"])
    assert job["state"] == "canceled" and job["bytes_done"] < 16 * MiB
    assert len(await w.volumes(w.f1, disk)) == 1
    assert not (await w.volumes(w.f2, disk))[0]["legal"]
    relay.kill()
    w.host_url("h0", w.a.port)
    rc, out, err = await asyncio.to_thread(finish, cli(w, "disk", "move", disk, "--to", w.f2,
                                                       "--json"))
    assert rc == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["state"] == "done" and summary["source_removed"]
    assert await w.volumes(w.f1, disk) == []


async def test_cli_move_json_lines(world: World) -> None:
    w = world
    src = image(w.tmp / "j.raw", 6 * MiB, sparse=False)
    vm, disk = await w.vm_with(src, w.f1)
    rc, out, err = await asyncio.to_thread(finish, cli(w, "disk", "move", disk, "--to", w.f2,
                                                       "--json"))
    assert rc == 0, err
    *events, summary = [json.loads(line) for line in out.splitlines()]
    kinds = [e["event"] for e in events]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress, kinds
    done = [e["bytes_done"] for e in progress]
    assert all(type(e["bytes_done"]) is type(e["bytes_total"]) is int for e in progress)
    assert done == sorted(done) and done[-1] == progress[-1]["bytes_total"] == 6 * MiB
    assert (kinds.index("started") < kinds.index("progress") < kinds.index("recorded")
            < kinds.index("removed"))
    assert (summary["action"], summary["state"], summary["to"]) == ("move", "done", w.f2)
    assert summary["source_removed"] and summary["bytes_copied"] == 6 * MiB
    assert summary["verified_with"] == "xxh3_128 block hash"
    back = await w.download(disk, w.f2, w.tmp / "j2.raw")
    assert back["checksum"] == summary["checksum"]
    assert (w.tmp / "j2.raw").read_bytes() == src.read_bytes()
    assert await w.volumes(w.f1, disk) == []
    assert [d.sd_uuid for d in w.cache.disks(vm)] == [w.f2]


async def test_cli_upload_download_and_errors(world: World) -> None:
    w = world
    src = image(w.tmp / "up.raw", 12 * MiB, sparse=True)
    rc, out, err = await asyncio.to_thread(finish, cli(
        w, "disk", "upload", str(src), "--domain", w.f1, "--json"))
    assert rc == 0, err
    up = json.loads(out.splitlines()[-1])
    assert up["data_bytes"] < 12 * MiB and up["sd"] == w.f1
    assert any(json.loads(x)["event"] == "progress" for x in out.splitlines()[:-1])
    rc, out, err = await asyncio.to_thread(finish, cli(
        w, "disk", "download", up["disk"], str(w.tmp / "down.raw"), "--domain", w.f1))
    assert rc == 0, err
    assert (w.tmp / "down.raw").read_bytes() == src.read_bytes()
    assert out.startswith(f"downloaded disk {up['disk']}")
    assert f"xxh3_128 checksum {up['checksum']}" in out
    rc, out, err = await asyncio.to_thread(finish, cli(
        w, "vm", "create", "cli-vm", "--attach", f"{up['disk']}@{w.f1}",
        "--disk", f"1M@{w.f2}:qcow2", "--json"))
    assert rc == 0, err
    vm = json.loads(out.splitlines()[-1])
    assert {d.sd_uuid for d in w.cache.disks(vm["uuid"])} == {w.f1, w.f2}
    rc, out, err = await asyncio.to_thread(finish, cli(
        w, "vm", "create", "one-disk", "--disk", f"1M@{w.f2}"))
    assert rc == 0, err
    assert out.strip().startswith("created vm one-disk (") and out.strip().endswith("with 1 disk")
    unknown = str(uuid.uuid4())
    vmdk = w.tmp / "x.vmdk"
    subprocess.run(["qemu-img", "create", "-f", "vmdk", str(vmdk), "10M"], check=True,
                   capture_output=True)
    small = w.tmp / "small.raw"
    small.write_bytes(os.urandom(4096))
    floating = await w.upload(image(w.tmp / "floating.raw", 1 * MiB, sparse=False), w.f1)
    qcow1 = w.tmp / "x.qcow"
    qcow1.write_bytes(b"QFI\xfb\0\0\0\1" + bytes(504))
    outside = w.tmp / "x.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-o",
                    f"data_file={w.tmp / 'x.data'},data_file_raw=on", str(outside), "1M"],
                   check=True, capture_output=True)
    for args, code, text in [
        (["disk", "move", unknown, "--to", w.f2], 2, f"disk {unknown} is not known"),
        (["disk", "move", up["disk"], "--to", unknown], 2, f"domain {unknown} is not known"),
        (["disk", "copy", up["disk"], "--to", w.f2, "--format", "qcow2"], 1,
         "needs one host that serves both domains"),
        (["vm", "create", "x", "--disk", f"7@{w.f1}"], 2, "multiple of 512"),
        (["disk", "download", "nope", str(w.tmp / "nope.raw"), "--domain", w.f1], 2,
         "disk 'nope' is not a UUID"),
        (["disk", "download", up["disk"], str(w.tmp / "nope.raw"), "--domain", "nope"], 2,
         "domain 'nope' is not a UUID"),
        (["disk", "upload", str(src), "--domain", "nope"], 2, "domain 'nope' is not a UUID"),
        (["disk", "upload", str(src), "--domain", w.f1, "--disk", unknown], 2,
         f"there is no disk {unknown} on {w.f1} to resume into"),
        (["disk", "upload", str(small), "--domain", w.f1, "--disk", floating], 2,
         "upload into a new disk instead"),
        (["disk", "upload", str(src), "--domain", w.f1, "--disk", up["disk"]], 2,
         "is a disk of vm cli-vm; --disk only finishes an interrupted upload"),
        (["disk", "upload", str(vmdk), "--domain", w.f1], 2, "is a VMDK image, not raw"),
        (["disk", "upload", str(qcow1), "--domain", w.f1], 2, "of version 1, not qcow2"),
        (["disk", "upload", str(outside), "--domain", w.f1], 2, "with an external data file"),
    ]:
        rc, out, err = await asyncio.to_thread(finish, cli(w, *args))
        assert (rc, err.count("\n")) == (code, 1) and text in err, (args, rc, err)
    assert len(await w.volumes(w.f1, up["disk"])) == 1  # nothing moved by a failed command


async def test_download_over_an_old_file(world: World) -> None:
    """An old file at the path: its bytes must not survive in the holes."""
    w = world
    src = image(w.tmp / "src.raw", 8 * MiB, sparse=True)
    disk = await w.upload(src, w.f1)
    dest = w.tmp / "dest.raw"
    dest.write_bytes(os.urandom(12 * MiB))  # longer, and data where the image has holes
    await w.download(disk, w.f1, dest)
    assert dest.read_bytes() == src.read_bytes()


async def test_disk_list(world: World) -> None:
    """Disks as the domains' hosts list them, with the VMs that have them;
    a disk no VM has (an upload) is listed too, and the OVF stores."""
    w = world
    src = image(w.tmp / "list.raw", 4 * MiB, sparse=True)
    floating = await w.upload(src, w.f1)
    _, attached = await w.vm_with(src, w.f2, name="lister")
    rc, out, err = await asyncio.to_thread(finish, cli(w, "disk", "list", "--json"))
    assert rc == 0, err
    found = {d["disk"]: d for d in json.loads(out)}
    assert (found[floating]["domain"], found[floating]["used_by"]) == (w.f1, [])
    assert (found[attached]["domain"], found[attached]["used_by"]) == (w.f2, ["vm lister"])
    assert found[floating]["content"] == "DATA" and found[floating]["size"] == 4 * MiB
    assert found[floating]["legal"] and found[floating]["volumes"] == 1
    stores = [d for d in found.values() if d["content"] == "OVF_STORE"]
    assert sorted(d["domain"] for d in stores) == sorted([w.f1, w.f1, w.f2, w.f2])
    store = next(d for d in stores if d["domain"] == w.f1)["disk"]
    rc, out, err = await asyncio.to_thread(finish, cli(
        w, "disk", "download", store, str(w.tmp / "store.tar"), "--domain", w.f1))
    # Listed, so not "no volume of disk": it is a store, not a data disk.
    assert rc == 1 and "is an OVF_STORE volume, not a data disk" in err, err
    rc, out, err = await asyncio.to_thread(finish, cli(w, "disk", "list", "--domain", w.f1))
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["DISK", "DOMAIN"] and len(lines) == 1 + 3
    row = next(line for line in lines if line.startswith(floating))
    assert row.split()[2:5] == ["DATA", "raw", str(4 * MiB)] and row.endswith("-")
    assert attached not in out
    # A copy keeps its disk's UUID: the one a failed copy left on another
    # domain is no VM's.
    status, body = w.a.request("POST", f"/domains/{w.f1}/volumes", {
        "img_id": attached, "vol_id": str(uuid.uuid4()), "size": MiB, "format": "raw",
        "allocation": "sparse"})
    assert status == 201, body
    rc, out, err = await asyncio.to_thread(finish, cli(w, "disk", "list", "--json"))
    assert rc == 0, err
    found = {(d["disk"], d["domain"]): d for d in json.loads(out)}
    assert found[attached, w.f2]["used_by"] == ["vm lister"]
    assert found[attached, w.f1]["used_by"] == []
    w.host_url("h1", 1)  # nothing listens there: one sentence, exit 1
    rc, out, err = await asyncio.to_thread(finish, cli(w, "disk", "list", "--domain", w.f2))
    assert (rc, err.count("\n")) == (1, 1), err
    assert err.startswith(f"sluice-engine: no host listed the disks of domain {w.f2}: ")
    # Every domain: what could be listed is, and the one that could not is named.
    rc, out, err = await asyncio.to_thread(finish, cli(w, "disk", "list"))
    assert (rc, err.count("\n")) == (1, 1), err
    assert err.startswith(f"sluice-engine: no host listed the disks of domain {w.f2}: ")
    assert floating in out and w.f2 not in out


async def test_disk_delete(world: World) -> None:
    """An upload no VM has goes; a VM's disk, an OVF store and a disk that
    is not there are refused, each in one sentence, and stay."""
    w = world
    src = image(w.tmp / "del.raw", 4 * MiB, sparse=True)
    floating = await w.upload(src, w.f1)
    _, attached = await w.vm_with(src, w.f2, name="keeper")
    rc, out, err = await asyncio.to_thread(finish, cli(
        w, "disk", "delete", floating, "--domain", w.f1))
    assert rc == 0, err
    assert out.strip() == f"deleted disk {floating} from {w.f1} (1 volume)"
    assert await w.volumes(w.f1, floating) == []
    store = next(v["img_uuid"] for v in await w.volumes(w.f2, None)
                 if v["content"] == "OVF_STORE")
    unknown = str(uuid.uuid4())
    for disk, sd, code, text in [
        (attached, w.f2, 2, f"disk {attached} on {w.f2} is a disk of vm keeper"),
        (store, w.f2, 2, "is an OVF_STORE volume, which the daemon keeps"),
        (unknown, w.f1, 2, f"storage domain {w.f1} holds no volume of disk {unknown}"),
        ("nope", w.f1, 2, "disk 'nope' is not a UUID"),
    ]:
        rc, out, err = await asyncio.to_thread(finish, cli(
            w, "disk", "delete", disk, "--domain", sd))
        assert (rc, err.count("\n")) == (code, 1) and text in err, (disk, rc, err)
    assert len(await w.volumes(w.f2, attached)) == 1
    assert len(await w.volumes(w.f2, store)) == 1


def test_volumes_are_deleted_leaves_first() -> None:
    chain: list[dict[str, Any]] = [
        {"vol_uuid": "base", "parent": None}, {"vol_uuid": "top", "parent": "mid"},
        {"vol_uuid": "mid", "parent": "base"}, {"vol_uuid": "lone", "parent": None}]
    order = [v["vol_uuid"] for v in diskdelete.leaves_first(chain)]
    assert order.index("top") < order.index("mid") < order.index("base")
    assert sorted(order) == ["base", "lone", "mid", "top"]


async def test_a_refused_resume_leaves_the_disk_as_it_was(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk was marked incomplete before the host was asked for the
    ticket: refused (a copy job reading the disk), the untouched, whole disk
    stayed 'legal: no', and copies and attaches refused it."""
    w = world
    src = image(w.tmp / "whole.raw", 4 * MiB, sparse=True)
    disk = await w.upload(src, w.f1)

    async def refused(*args: Any, **kw: Any) -> str:
        raise HostError("h0", "volume in use by job j", 409, "conflict")

    monkeypatch.setattr(transfers, "add_ticket", refused)
    with pytest.raises(HostError):
        await transfers.open_upload(w.ctx, str(src), w.f1, disk)
    assert [v["legal"] for v in await w.volumes(w.f1, disk)] == [True]


def _read_ticket(d: Daemon, sd: str, disk: str, vol: str) -> str:
    ticket = str(uuid.uuid4())
    status, body = d.request("PUT", f"/tickets/{ticket}", {
        "uuid": ticket, "size": MiB, "ops": ["read"], "timeout": 60,
        "sd_id": sd, "img_id": disk, "vol_id": vol})
    assert status == 200, body
    return ticket


async def test_disk_delete_asks_every_host_of_the_domain(world: World) -> None:
    """A shared domain: a download through h1 reads the disk while the
    delete goes through h0, which knows nothing of h1's ticket.  It was
    deleted under the download; now it is refused, and nothing goes."""
    w = world
    floating = await w.upload(image(w.tmp / "shared.raw", 4 * MiB, sparse=True), w.f1)
    h1 = w.cache.host("h1")  # file domains are shared storage: h1 serves F1 too
    w.cache.add_host("h1", h1.url, h1.token, [w.f1, w.f2])
    await w.push()
    [vol] = [v["vol_uuid"] for v in await w.volumes(w.f1, floating)]
    ticket = _read_ticket(w.b, w.f1, floating, vol)
    rc, _, err = await asyncio.to_thread(finish, cli(
        w, "disk", "delete", floating, "--domain", w.f1))
    assert (rc, err.count("\n")) == (1, 1), err
    assert (f"disk {floating} is in use: transfer ticket {ticket} on host h1 (volume {vol}); "
            "nothing was deleted") in err
    assert len(await w.volumes(w.f1, floating)) == 1
    w.b.request("DELETE", f"/tickets/{ticket}")
    w.cache.add_host("h1", h1.url, "not-the-token", [w.f1, w.f2])  # h1 cannot be asked
    rc, _, err = await asyncio.to_thread(finish, cli(
        w, "disk", "delete", floating, "--domain", w.f1))
    assert (rc, err.count("\n")) == (1, 1), err
    assert f"cannot ask host h1, which serves {w.f1}, whether it uses disk {floating}" in err
    assert len(await w.volumes(w.f1, floating)) == 1
    w.cache.add_host("h1", h1.url, h1.token, [w.f1, w.f2])
    rc, _, err = await asyncio.to_thread(finish, cli(
        w, "disk", "delete", floating, "--domain", w.f1))
    assert rc == 0, err
    assert await w.volumes(w.f1, floating) == []


async def test_move_keeps_a_source_another_host_reads(world: World) -> None:
    """The copy is done and recorded; the old volume, which a download
    reads through h1 (F1 is shared), stays until a later run finds it free.
    h0 removed it under the download."""
    w = world
    raw = image(w.tmp / "m.raw", 4 * MiB, sparse=True)
    _, disk = await w.vm_with(raw, w.f1)
    h1 = w.cache.host("h1")
    w.cache.add_host("h1", h1.url, h1.token, [w.f2, w.f1])
    await w.push()
    [vol] = [v["vol_uuid"] for v in await w.volumes(w.f1, disk)]
    ticket = _read_ticket(w.b, w.f1, disk, vol)
    with pytest.raises(DiskError, match=(
            f"the old copy of disk {disk} on {w.f1} is in use: transfer ticket {ticket} on "
            f"host h1 .*; the disk is on its new domain; run the command again")):
        await copy_disk(w.ctx, disk, w.f2, move=True)
    assert [d.sd_uuid for d in w.cache.disks()] == [w.f2]
    assert len(await w.volumes(w.f1, disk)) == 1
    w.b.request("DELETE", f"/tickets/{ticket}")
    again = await copy_disk(w.ctx, disk, w.f2, move=True)
    assert again["already_there"] and again["source_removed"]
    assert await w.volumes(w.f1, disk) == []


async def test_disk_delete_refused_half_way(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chain whose base a ticket reads, the ticket added after every host
    said the disk was free: the top goes, the base is refused.  The command
    said only the host's 409; what was left looked whole."""
    w = world
    disk, base, top = (str(uuid.uuid4()) for _ in range(3))
    for vol, parent in ((base, None), (top, base)):
        status, body = w.a.request("POST", f"/domains/{w.f1}/volumes", {
            "img_id": disk, "vol_id": vol, "size": MiB, "format": "qcow2",
            **({"parent": parent} if parent else {})})
        assert status == 201, body
    real_check = disks.check_unused
    tickets = []

    async def then_a_ticket(*args: Any) -> None:
        await real_check(*args)
        tickets.append(_read_ticket(w.a, w.f1, disk, base))

    monkeypatch.setattr(diskdelete, "check_unused", then_a_ticket)
    with pytest.raises(HostError) as refused:
        await diskdelete.delete_disk(w.ctx, disk, w.f1)
    assert f"removed 1 volume of disk {disk} ({top}), then:" in str(refused.value)
    assert "the rest is marked incomplete" in str(refused.value)
    assert [(v["vol_uuid"], v["legal"]) for v in await w.volumes(w.f1, disk)] == [
        (base, False)]
    monkeypatch.setattr(diskdelete, "check_unused", real_check)
    w.a.request("DELETE", f"/tickets/{tickets[0]}")
    rc, _, err = await asyncio.to_thread(finish, cli(
        w, "disk", "delete", disk, "--domain", w.f1))
    assert rc == 0, err
    assert await w.volumes(w.f1, disk) == []


async def _upload_interrupted(w: World, monkeypatch: pytest.MonkeyPatch, step: str,
                              pattern: str) -> None:
    """``disk upload`` (in-process) with a Ctrl-C at ``transfers.<step>``:
    its one sentence must match ``pattern`` (group 1 the disk), and the
    disk must be left incomplete."""
    import argparse

    from engine_client import diskcli
    from engine_client.progress import Progress

    src = image(w.tmp / f"{step}.raw", 4 * MiB, sparse=True)
    real = getattr(transfers, step)

    async def interrupted(ctx: Any, opened: Any) -> None:
        if step == "close":
            await real(ctx, opened)  # the ticket goes; the signal came as it went
        raise asyncio.CancelledError

    async def no_signals(work: Any) -> Any:  # SIGINT handlers need the main thread
        return await work

    monkeypatch.setattr(transfers, step, interrupted)
    monkeypatch.setattr(diskcli, "_cancellable", no_signals)
    args = argparse.Namespace(action="upload", file=str(src), domain=w.f1, disk=None,
                              json=True)
    with pytest.raises(EngineError) as e:
        await asyncio.to_thread(diskcli._transfer, w.cache, w.cfg, args,
                                Progress("upload", True))
    found = re.fullmatch(pattern, str(e.value))
    assert found, str(e.value)
    assert [v["legal"] for v in await w.volumes(w.f1, found[1])] == [False]


async def test_an_interrupted_close_says_how_to_finish(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second Ctrl-C while the ticket was being closed said 'canceled
    before any byte moved; nothing was left on the host' and hid the disk's
    id, though its volume was there, incomplete."""
    await _upload_interrupted(
        world, monkeypatch, "close",
        r"interrupted while ending the transfer, whose ticket on host h0 now expires by "
        r"itself; run the command again with --disk (\S+) to finish it")


async def test_a_canceled_completion_says_how_to_finish(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the verified upload was being marked complete said
    'canceled before any byte moved; nothing was left on the host'."""
    await _upload_interrupted(
        world, monkeypatch, "complete",
        r"interrupted while marking disk (\S+) complete; run the command again with "
        r"--disk \1 to finish it")


async def test_upload_never_resumes_into_a_disk_a_vm_has(world: World) -> None:
    """``--disk`` is for a disk an interrupted upload made; one the cache
    gives to a VM of the same size was overwritten with the file, the VM's
    data gone, and the command said 'uploaded'."""
    w = world
    src = image(w.tmp / "vm.raw", 4 * MiB, sparse=False)
    _, disk = await w.vm_with(src, w.f1)
    other = image(w.tmp / "other.raw", 4 * MiB, sparse=False)
    with pytest.raises(EngineError, match=f"disk {disk} on {w.f1} is a disk of vm vm"):
        await transfers.open_upload(w.ctx, str(other), w.f1, disk)
    assert [v["legal"] for v in await w.volumes(w.f1, disk)] == [True]
    back = await w.download(disk, w.f1, w.tmp / "back.raw")
    assert (w.tmp / "back.raw").read_bytes() == src.read_bytes(), back


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_stopped_download_leaves_no_partial_file(world: World,
                                                         sig: signal.Signals) -> None:
    """SIGTERM (a service stopped, ``timeout``, ``kill``) during a download
    killed the command at once: its hidden ``.part`` file stayed next to
    the target, as big as the disk, and its read ticket stayed open on the
    host.  It now ends as Ctrl-C does: the partial file removed, the
    ticket deleted, one sentence and exit 1; the target as it was."""
    w = world
    src = image(w.tmp / "stop.raw", 16 * MiB, sparse=False)
    disk = await w.upload(src, w.f1)
    dest = w.tmp / "dest.raw"
    dest.write_bytes(b"the last good copy")
    relay = Relay(w.a.port, 2 * MiB)
    w.host_url("h0", relay.port)
    relay.stalling.set()
    p = cli(w, "disk", "download", disk, str(dest), "--domain", w.f1)
    try:
        await _stalled(relay)
        p.send_signal(sig)
        await asyncio.sleep(0.5)  # the ticket is deleted through the relay
        relay.stalling.clear()
        relay.go.set()
        rc, _, err = await asyncio.to_thread(finish, p)
    finally:
        relay.kill()
    assert rc == 1 and err.count("\n") == 1 and "interrupted" in err, (rc, err)
    assert dest.read_bytes() == b"the last good copy"
    assert sorted(x.name for x in w.tmp.iterdir() if x.name.startswith(".dest.raw")) == []


def _journal_writer(state_dir: str, n: int, errors: Any) -> None:
    from engine_client import diskmove

    class C:  # what the journal needs of a Cache
        pass

    C.state_dir = state_dir  # type: ignore[attr-defined]
    data = {f"d{n}-{k}": {"sd_id": "s" * 100, "img_id": "i", "vol_id": "v"}
            for k in range(100 * n + 2)}
    for _ in range(200):
        try:
            diskmove._write_journal(C, data)  # type: ignore[arg-type]
        except OSError as e:
            errors.put(str(e))


def test_moves_at_once_never_tear_the_journal(tmp_path: Path) -> None:
    """Two ``disk move`` processes writing pending-removals.json at once
    shared one temporary name: a reader found half a file (every later move
    then stopped with 'cannot read pending-removals.json'), a writer found
    its file renamed away (a traceback)."""
    import multiprocessing

    from engine_client import diskmove

    class C:
        state_dir = str(tmp_path)

    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    diskmove._write_journal(C, {})  # type: ignore[arg-type]
    writers = [ctx.Process(target=_journal_writer, args=(str(tmp_path), n, errors))
               for n in range(2)]
    for p in writers:
        p.start()
    torn = 0
    while any(p.is_alive() for p in writers):
        try:
            diskmove._read_journal(C)  # type: ignore[arg-type]
        except DiskError:
            torn += 1
    for p in writers:
        p.join()
    failed = []
    while not errors.empty():
        failed.append(errors.get())
    assert (torn, failed[:1]) == (0, [])
    assert [x.name for x in tmp_path.iterdir() if x.name.endswith(".tmp")] == []


def _put(key: str, entry: dict[str, Any], data: dict[str, Any]) -> None:
    data[key] = entry


def _journal_adder(state_dir: str, n: int) -> None:
    from engine_client import diskmove

    class C:
        pass

    C.state_dir = state_dir  # type: ignore[attr-defined]
    for k in range(100):
        key = f"{n}-{k}"
        entry = {"sd_id": "s", "img_id": key, "vol_id": "v"}
        diskmove._update_journal(C, functools.partial(_put, key, entry))  # type: ignore[arg-type]


def test_moves_at_once_keep_each_others_journal_entries(tmp_path: Path) -> None:
    """Each move read the journal, added its entry and wrote it back: one
    written between another's read and write lost its entry, and its old
    volumes were never removed."""
    import multiprocessing

    from engine_client import diskmove

    class C:
        state_dir = str(tmp_path)

    ctx = multiprocessing.get_context("fork")
    adders = [ctx.Process(target=_journal_adder, args=(str(tmp_path), n)) for n in range(2)]
    for p in adders:
        p.start()
    for p in adders:
        p.join()
    assert len(diskmove._read_journal(C)) == 200  # type: ignore[arg-type]


async def test_a_vm_disk_is_not_attached_to_a_second_vm(world: World) -> None:
    """``vm create --attach`` took a disk another VM has: two VMs with one
    non-shareable disk (both may run and write it), each OVF store entry
    naming it as that VM's own.  oVirt refuses such an attach."""
    w = world
    src = image(w.tmp / "owned.raw", 4 * MiB, sparse=True)
    _, disk = await w.vm_with(src, w.f1, "owner")
    with pytest.raises(EngineError, match=f"disk {disk} on {w.f1} is a disk of vm owner"):
        await create_vm(w.ctx, "second", [], [(disk, w.f1)])
    assert sorted(e.name for e in w.cache.entities()) == ["owner"]
