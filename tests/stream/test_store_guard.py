"""Transfers never write what only the OVF store update may: a write ticket
or a copy job into an OVF store, a store resized or deleted, or a write
ticket on a block domain's device (its label, volume table, stores and
volumes) would each destroy the last good store the update protocol keeps.  All refused,
and the store still reads back; reading them through a ticket works."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

from tests.conftest import LoopDeviceFactory

from .conftest import Client, MiB


def new_id() -> str:
    return str(uuid.uuid4())


async def _default_sd(client: Client) -> str:
    return str((await (await client.get("/pool")).json())["master_domain"])


async def _stores(client: Client, sd: str) -> list[dict[str, Any]]:
    resp = await client.get(f"/domains/{sd}/volumes")
    assert resp.status == 200, await resp.text()
    return [v for v in (await resp.json())["volumes"] if v["content"] == "OVF_STORE"]


async def _commit_store(client: Client, sd: str) -> int:
    """Push a store of one OVF (a manifest-less tar); its generation."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [("info.json", b'{"Last Updated": "x", "Storage Domains": []}'),
                           (f"{new_id()}.ovf", b"<ovf/>")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    resp = await client.put(f"/domains/{sd}/ovf-store", data=buf.getvalue())
    assert resp.status == 200, await resp.text()
    return int((await resp.json())["generation"])


async def _store_served(client: Client, sd: str) -> str:
    resp = await client.get(f"/domains/{sd}/ovf-store")
    assert resp.status == 200, await resp.text()
    return hashlib.sha256(await resp.read()).hexdigest()


def _ticket(ops: list[str], **where: Any) -> dict[str, Any]:
    return {"uuid": new_id(), "size": MiB, "ops": ops, "timeout": 60, **where}


async def test_ovf_store_volumes_are_read_only_to_transfers(client: Client) -> None:
    sd = await _default_sd(client)
    generation = await _commit_store(client, sd)
    served = await _store_served(client, sd)
    stores = await _stores(client, sd)
    assert len(stores) == 2
    newest = stores[0]
    by_uuid = {"sd_id": sd, "img_id": newest["img_uuid"], "vol_id": newest["vol_uuid"]}
    by_path = {"url": f"file://{newest['path']}"}
    for where in (by_uuid, by_path):
        for ops in (["read", "write"], ["write"]):
            t = _ticket(ops, **where)
            resp = await client.put(f"/tickets/{t['uuid']}", json=t)
            assert resp.status == 403, (where, ops, await resp.text())
            assert "is an OVF store" in await resp.text()
            assert (await client.get(f"/tickets/{t['uuid']}")).status == 404
        t = _ticket(["read"], **where)
        resp = await client.put(f"/tickets/{t['uuid']}", json=t)
        assert resp.status == 200, (where, await resp.text())
        resp = await client.get(f"/images/{t['uuid']}", headers={"Range": "bytes=0-511"})
        assert resp.status == 206
        assert len(await resp.read()) == 512

    # Resizing a store would move its commit record away from the end.
    resp = await client.patch(
        f"/domains/{sd}/images/{newest['img_uuid']}/volumes/{newest['vol_uuid']}",
        json={"size": 2 * newest["size"]})
    assert resp.status == 403, await resp.text()
    assert "OVF store" in (await resp.json())["detail"]

    # A copy job into a store is refused before it marks anything.
    img, vol = new_id(), new_id()
    resp = await client.post(f"/domains/{sd}/volumes", json={
        "img_id": img, "vol_id": vol, "size": newest["size"]})
    assert resp.status == 201, await resp.text()
    resp = await client.post("/jobs/copy", json={
        "source": {"sd_id": sd, "img_id": img, "vol_id": vol}, "destination": by_uuid})
    assert resp.status == 403, await resp.text()
    assert "is an OVF store" in (await resp.json())["detail"]

    for store in await _stores(client, sd):
        assert store["size"] == newest["size"] and store["legal"] is True
    assert await _store_served(client, sd) == served
    resp = await client.get(f"/domains/{sd}/ovf-store/info")
    assert max(s["record"]["generation"] for s in (await resp.json())["stores"]
               if s["valid"]) == generation


async def test_a_data_volume_next_to_the_stores_is_writable_by_path(
    client: Client, domain_dir: Path
) -> None:
    sd = await _default_sd(client)
    img, vol = new_id(), new_id()
    resp = await client.post(f"/domains/{sd}/volumes", json={
        "img_id": img, "vol_id": vol, "size": MiB})
    assert resp.status == 201, await resp.text()
    path = (await resp.json())["path"]
    t = _ticket(["read", "write"], url=f"file://{path}")
    resp = await client.put(f"/tickets/{t['uuid']}", json=t)
    assert resp.status == 200, await resp.text()
    resp = await client.put(f"/images/{t['uuid']}", data=b"x" * 4096)
    assert resp.status == 200, await resp.text()
    # A plain file in images/ that is no volume stays writable too.
    plain = domain_dir / "plain.raw"
    plain.write_bytes(bytes(MiB))
    t = _ticket(["read", "write"], url=f"file://{plain}")
    assert (await client.put(f"/tickets/{t['uuid']}", json=t)).status == 200


async def test_block_domain_devices_are_read_only_to_path_tickets(
    client: Client, tmp_path: Path, loop_device: LoopDeviceFactory
) -> None:
    devices = [loop_device(12 * MiB), loop_device(8 * MiB)]
    sd = await _default_sd(client)
    block_sd = new_id()
    resp = await client.post("/domains", json={"uuid": block_sd, "type": "block",
                                               "location": devices, "ovf_stores": 1,
                                               "ovf_store_size": MiB})
    assert resp.status == 201, await resp.text()
    pool = await (await client.get("/pool")).json()
    domains = {**pool["domains"],
               block_sd: {"type": "block", "location": devices, "status": "Active"}}
    resp = await client.put("/pool", json={
        "pool_id": pool["pool_id"], "map_version": pool["map_version"] + 1,
        "master_domain": sd, "domains": domains})
    assert resp.status == 200, await resp.text()
    await _commit_store(client, block_sd)
    served = await _store_served(client, block_sd)
    with open(devices[0], "rb") as f:
        label = f.read(MiB)

    for device in devices:  # the first holds the table; both hold volumes
        t = _ticket(["read", "write"], url=f"file://{device}")
        resp = await client.put(f"/tickets/{t['uuid']}", json=t)
        assert resp.status == 403, await resp.text()
        assert await resp.text() == (
            f"Invalid ticket: {device} is a device of block storage domain {block_sd}, "
            "which holds its label, volume table and OVF stores; a ticket may only read "
            "it: name a volume by sd_id, img_id and vol_id to write one\n")
        t = _ticket(["read"], url=f"file://{device}")
        resp = await client.put(f"/tickets/{t['uuid']}", json=t)
        assert resp.status == 200, await resp.text()
        resp = await client.get(f"/images/{t['uuid']}", headers={"Range": "bytes=0-4095"})
        assert resp.status == 206
        if device == devices[0]:
            assert await resp.read() == label[:4096]

    (store,) = await _stores(client, block_sd)
    t = _ticket(["write"], sd_id=block_sd, img_id=store["img_uuid"], vol_id=store["vol_uuid"])
    resp = await client.put(f"/tickets/{t['uuid']}", json=t)
    assert resp.status == 403, await resp.text()
    resp = await client.patch(
        f"/domains/{block_sd}/images/{store['img_uuid']}/volumes/{store['vol_uuid']}",
        json={"size": 2 * store["size"]})
    assert resp.status == 403, await resp.text()

    with open(devices[0], "rb") as f:
        assert f.read(MiB) == label
    assert await _store_served(client, block_sd) == served


async def test_ovf_store_volumes_cannot_be_deleted(client: Client) -> None:
    """DELETE of a store answered 204 and removed half of the domain's
    redundancy; resizing one was already refused (403)."""
    sd = await _default_sd(client)
    generation = await _commit_store(client, sd)
    served = await _store_served(client, sd)
    stores = await _stores(client, sd)
    assert len(stores) == 2
    # A read ticket on a store is allowed: it must not turn the 403 into a 409.
    t = _ticket(["read"], sd_id=sd, img_id=stores[0]["img_uuid"],
                vol_id=stores[0]["vol_uuid"])
    assert (await client.put(f"/tickets/{t['uuid']}", json=t)).status == 200
    for store in reversed(stores):
        resp = await client.delete(
            f"/domains/{sd}/images/{store['img_uuid']}/volumes/{store['vol_uuid']}")
        assert resp.status == 403, await resp.text()
        body = await resp.json()
        assert body == {"error": "forbidden", "detail": (
            f"Volume {store['img_uuid']}/{store['vol_uuid']} of storage domain {sd} is an "
            "OVF store: the daemon manages the domain's OVF_STORE volumes, and deleting "
            "one loses a copy of the domain's OVFs")}
    assert await _stores(client, sd) == stores
    assert await _store_served(client, sd) == served
    resp = await client.get(f"/domains/{sd}/ovf-store/info")
    found = (await resp.json())["stores"]
    assert len(found) == 2 and all(s["valid"] for s in found)
    assert max(s["record"]["generation"] for s in found) == generation
