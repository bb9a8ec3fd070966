"""A volume is never deleted under a transfer: a block domain gives the
space of a deleted volume to the next one created, where the late writes
of a ticket or a copy job would land.  DELETE answers 409 naming the user,
and works once the ticket or job has ended."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LoopDeviceFactory
from volume.blockdomain import BlockDomain
from volume.filedomain import FileDomain
from volume.region import RegionVolume

from .conftest import Client, MiB
from .test_copy import add_domain, new_volume, set_pool, start_copy, wait


def new_id() -> str:
    return str(uuid.uuid4())


def volume_path(ref: dict[str, str]) -> str:
    return f"/domains/{ref['sd_id']}/images/{ref['img_id']}/volumes/{ref['vol_id']}"


async def ticket(client: Client, ops: list[str], **where: Any) -> str:
    t = {"uuid": new_id(), "size": MiB, "ops": ops, "timeout": 60, **where}
    resp = await client.put(f"/tickets/{t['uuid']}", json=t)
    assert resp.status == 200, await resp.text()
    return str(t["uuid"])


async def refused(client: Client, ref: dict[str, str], user: str) -> None:
    resp = await client.delete(volume_path(ref))
    assert resp.status == 409, await resp.text()
    assert (await resp.json())["detail"] == (
        f"volume {ref['img_id']}/{ref['vol_id']} is in use by {user}; end it first")
    resp = await client.get(volume_path(ref))
    assert resp.status == 200
    assert (await resp.json())["in_use"] == user  # what an engine asks every host


@pytest.mark.parametrize("kind", ["file", "block"])
async def test_a_ticket_keeps_its_volume(client: Client, tmp_path: Path, kind: str,
                                         loop_device: LoopDeviceFactory) -> None:
    where: Any = [loop_device(16 * MiB)] if kind == "block" else tmp_path / "sd"
    if kind == "file":
        where.mkdir()
    sd = await add_domain(client, where, kind, ovf_stores=1, ovf_store_size=MiB)
    await set_pool(client, {sd: (kind, where if kind == "block" else str(where))})
    ref = await new_volume(client, sd, MiB)
    by_uuid = await ticket(client, ["read", "write"], **ref)
    await refused(client, ref, f"transfer ticket {by_uuid}")
    assert (await client.delete(f"/tickets/{by_uuid}")).status == 204
    if kind == "file":  # a path ticket names a file domain's volume too
        path = (await (await client.get(volume_path(ref))).json())["path"]
        by_path = await ticket(client, ["read"], url=f"file://{os.path.realpath(path)}")
        await refused(client, ref, f"transfer ticket {by_path}")
        assert (await client.delete(f"/tickets/{by_path}")).status == 204
    assert (await (await client.get(volume_path(ref))).json())["in_use"] is None
    assert (await client.delete(volume_path(ref))).status == 204
    assert (await client.get(volume_path(ref))).status == 404


async def test_a_copy_job_keeps_its_volumes(client: Client, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    sa, sb = await add_domain(client, a), await add_domain(client, b)
    await set_pool(client, {sa: ("file", str(a)), sb: ("file", str(b))})
    src, dst = await new_volume(client, sa, MiB), await new_volume(client, sb, MiB)
    marking, release = threading.Event(), threading.Event()
    original = FileDomain.set_legal

    def slow_mark(self: FileDomain, img_uuid: str, vol_uuid: str, legal: bool) -> Any:
        if legal:
            marking.set()
            release.wait(10)
        return original(self, img_uuid, vol_uuid, legal)

    monkeypatch.setattr(FileDomain, "set_legal", slow_mark)
    job = await start_copy(client, src, dst)
    try:
        assert await asyncio.to_thread(marking.wait, 10)
        for ref in (src, dst):
            await refused(client, ref, f"job {job} (verifying)")
            # One writer per volume: no write ticket beside the job; reading is fine.
            t = {"uuid": new_id(), "size": MiB, "ops": ["write"], "timeout": 60, **ref}
            resp = await client.put(f"/tickets/{t['uuid']}", json=t)
            assert resp.status == 409, await resp.text()
            assert f"{ref['img_id']}/{ref['vol_id']} is in use by job {job} (verifying)" \
                in await resp.text()
            path = (await (await client.get(volume_path(ref))).json())["path"]
            t = {"uuid": new_id(), "size": MiB, "ops": ["write"], "timeout": 60,
                 "url": f"file://{path}"}  # by path: the same volume
            resp = await client.put(f"/tickets/{t['uuid']}", json=t)
            assert resp.status == 409, await resp.text()
            assert f"is in use by job {job} (verifying)" in await resp.text()
            assert (await client.delete(f"/tickets/{await ticket(client, ['read'], **ref)}")
                    ).status == 204
    finally:
        release.set()
    assert (await wait(client, job))["state"] == "done"

    # And no job beside a write ticket, on its destination or its source.
    for ref in (dst, src):
        writer = await ticket(client, ["read", "write"], **ref)
        resp = await client.post("/jobs/copy", json={"source": src, "destination": dst})
        assert resp.status == 409, await resp.text()
        assert (await resp.json())["detail"] == (
            f"volume {ref['img_id']}/{ref['vol_id']} is in use by transfer ticket {writer}, "
            "which may write it")
        assert (await client.delete(f"/tickets/{writer}")).status == 204
    reader = await ticket(client, ["read"], **src)
    assert (await wait(client, await start_copy(client, src, dst)))["state"] == "done"
    assert (await client.delete(f"/tickets/{reader}")).status == 204
    for ref in (src, dst):
        assert (await client.delete(volume_path(ref))).status == 204


# -- found by review of the first version: each failed on it

PATTERN = b"\xab" * MiB


def stick_pattern_writes(monkeypatch: Any) -> tuple[threading.Event, threading.Event]:
    """Block volume writes of PATTERN hang in their I/O worker until the
    second event is set; the first is set when one hangs."""
    entered, release = threading.Event(), threading.Event()
    original = RegionVolume.write

    def stuck_write(self: RegionVolume, offset: int, buf: memoryview) -> None:
        if not release.is_set() and len(buf) == MiB and bytes(buf[:1]) == b"\xab":
            entered.set()
            release.wait(20)
        original(self, offset, buf)

    monkeypatch.setattr(RegionVolume, "write", stuck_write)
    return entered, release


async def away_and_back(client: Client, sd: str) -> None:
    """Put ``sd`` in Maintenance (which cancels its write tickets), wait past
    the remove timeout (2 s in these tests), and make it Active again."""
    pool = (await (await client.get("/pool")).json())
    away = {**pool["domains"], sd: {**pool["domains"][sd], "status": "Maintenance"}}
    for version, domains in ((pool["map_version"] + 1, away),
                             (pool["map_version"] + 2, pool["domains"])):
        resp = await client.put("/pool", json={**pool, "map_version": version,
                                               "domains": domains})
        assert resp.status == 200, await resp.text()
        if domains is away:
            await asyncio.sleep(2.5)


async def _block_domain(client: Client, loop_device: LoopDeviceFactory) -> str:
    dev = loop_device(16 * MiB)
    sd = await add_domain(client, [dev], "block", ovf_stores=1, ovf_store_size=MiB)
    await set_pool(client, {sd: ("block", [dev])})
    return sd


async def _ticket(client: Client, ref: dict[str, str], ops: list[str]) -> str:
    t = str(uuid.uuid4())
    resp = await client.put(f"/tickets/{t}", json={"uuid": t, "size": MiB, "ops": ops,
                                                    "timeout": 60, **ref})
    assert resp.status == 200, await resp.text()
    return t


async def _read(client: Client, ref: dict[str, str]) -> bytes:
    t = await _ticket(client, ref, ["read"])
    resp = await client.get(f"/images/{t}")
    data = await resp.read()
    await client.delete(f"/tickets/{t}")
    return data



async def test_a_canceled_ticket_still_writing_keeps_its_volume(
        client: Client, loop_device: LoopDeviceFactory, monkeypatch: Any) -> None:
    """DELETE /tickets gives up after remove_timeout (409) while a write is
    still in an I/O worker: the ticket stays, canceled, with the operation
    running.  _user() skips canceled tickets, so the volume is deleted; the
    late write then lands in the next volume given that space."""
    sd = await _block_domain(client, loop_device)
    a = await new_volume(client, sd, MiB)
    t = await _ticket(client, a, ["write"])

    entered, release = stick_pattern_writes(monkeypatch)
    upload = asyncio.ensure_future(client.put(f"/images/{t}", data=PATTERN))
    deleted = None
    b = None
    try:
        assert await asyncio.to_thread(entered.wait, 10)
        resp = await client.delete(f"/tickets/{t}")
        assert resp.status == 409, await resp.text()  # the write is still running
        resp = await client.delete(volume_path(a))
        deleted = resp.status
        if deleted == 204:
            b = await new_volume(client, sd, MiB)  # a new disk, in the freed space
    finally:
        release.set()
        await upload
    landed = b is not None and await _read(client, b) == PATTERN
    assert deleted == 409, (
        f"DELETE answered {deleted} under a running write; the late write "
        f"{'landed in' if landed else 'missed'} the next volume created")


async def test_a_ticket_added_while_its_volume_is_deleted(
        client: Client, loop_device: LoopDeviceFactory, monkeypatch: Any) -> None:
    """_user() runs on the loop, the deletion then in a worker: a ticket
    added in between (PUT /tickets looks the volume up in another worker)
    is accepted for a volume being deleted.  Its stale region is then the
    next volume's, and its writes land there."""
    sd = await _block_domain(client, loop_device)
    a = await new_volume(client, sd, MiB)

    entered, release = threading.Event(), threading.Event()
    original = BlockDomain.delete_volume

    def slow_delete(self: BlockDomain, img_uuid: str, vol_uuid: str) -> None:
        entered.set()
        release.wait(20)
        original(self, img_uuid, vol_uuid)

    monkeypatch.setattr(BlockDomain, "delete_volume", slow_delete)
    deleting = asyncio.ensure_future(client.delete(volume_path(a)))
    try:
        assert await asyncio.to_thread(entered.wait, 10)
        t = str(uuid.uuid4())
        added = await client.put(f"/tickets/{t}", json={
            "uuid": t, "size": MiB, "ops": ["write"], "timeout": 60, **a})
    finally:
        release.set()
        resp = await deleting
    monkeypatch.setattr(BlockDomain, "delete_volume", original)
    landed = False
    if added.status == 200 and resp.status == 204:
        b = await new_volume(client, sd, MiB)
        w = await client.put(f"/images/{t}", data=PATTERN)
        landed = w.status == 200 and await _read(client, b) == PATTERN
    assert not (added.status == 200 and resp.status == 204), (
        f"ticket added ({added.status}) and volume deleted ({resp.status}); the "
        f"ticket's write {'landed in' if landed else 'missed'} the next volume")


async def test_a_ticket_canceled_by_the_map_keeps_its_volume_while_it_writes(
        client: Client, loop_device: LoopDeviceFactory, monkeypatch: Any) -> None:
    """A domain leaving Active cancels its write tickets; one whose write is
    stuck in a worker past the remove timeout stays (canceled) until the
    write ends, so a DELETE after the domain came back cannot free its space
    under it.  Then it goes, and the volume can be deleted."""
    dev = loop_device(16 * MiB)
    sd = await add_domain(client, [dev], "block", ovf_stores=1, ovf_store_size=MiB)
    await set_pool(client, {sd: ("block", [dev])}, version=1)
    a = await new_volume(client, sd, MiB)
    t = await _ticket(client, a, ["write"])
    entered, release = stick_pattern_writes(monkeypatch)
    upload = asyncio.ensure_future(client.put(f"/images/{t}", data=PATTERN))
    try:
        assert await asyncio.to_thread(entered.wait, 10)
        await away_and_back(client, sd)
        await refused(client, a, f"transfer ticket {t}")
    finally:
        release.set()
        await upload
    for _ in range(100):  # the ticket goes once its write has ended
        if (await client.get(f"/tickets/{t}")).status == 404:
            break
        await asyncio.sleep(0.05)
    assert (await client.delete(volume_path(a))).status == 204


async def test_a_ticket_readded_for_a_volume_being_deleted(
        client: Client, loop_device: LoopDeviceFactory, monkeypatch: Any) -> None:
    """PUT /tickets of an id in use for another volume checked that volume,
    then waited for the old ticket's requests to end, then added the new
    one: a DELETE that began meanwhile saw no ticket on the volume, and the
    look-up after the add, made while the delete was still running, found
    it still there.  The ticket then named freed space: its writes landed
    in the next volume created there."""
    sd = await _block_domain(client, loop_device)
    a, b = await new_volume(client, sd, MiB), await new_volume(client, sd, MiB)
    t = await _ticket(client, b, ["write"])
    entered_write, release_write = stick_pattern_writes(monkeypatch)
    upload = asyncio.ensure_future(client.put(f"/images/{t}", data=PATTERN))

    entered_delete, release_delete = threading.Event(), threading.Event()
    original = BlockDomain.delete_volume

    def slow_delete(self: BlockDomain, img_uuid: str, vol_uuid: str) -> None:
        entered_delete.set()
        release_delete.wait(20)
        original(self, img_uuid, vol_uuid)

    monkeypatch.setattr(BlockDomain, "delete_volume", slow_delete)
    try:
        assert await asyncio.to_thread(entered_write.wait, 10)
        readd = asyncio.ensure_future(client.put(f"/tickets/{t}", json={
            "uuid": t, "size": MiB, "ops": ["write"], "timeout": 60, **a}))
        await asyncio.sleep(0.2)  # waiting for the old ticket's write
        deleting = asyncio.ensure_future(client.delete(volume_path(a)))
        assert await asyncio.to_thread(entered_delete.wait, 10)
        release_write.set()
        await upload
        added = await readd
    finally:
        release_write.set()
        release_delete.set()
        deleted = await deleting
    monkeypatch.setattr(BlockDomain, "delete_volume", original)
    assert not (added.status == 200 and deleted.status == 204), (
        f"ticket re-added ({added.status}) for a volume deleted ({deleted.status})")
    assert added.status == 409, await added.text()
