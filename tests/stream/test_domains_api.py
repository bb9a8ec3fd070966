"""A block domain on two real loop devices and a file domain side by side in
one daemon: volumes created, written through the image API, listed, deleted."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from .conftest import Client

MiB = 1 << 20


def new_id() -> str:
    return str(uuid.uuid4())


async def test_file_and_block_domains_side_by_side(
    client: Client, tmp_path: Path, loop_device: Any
) -> None:
    devices = [loop_device(20 * MiB), loop_device(16 * MiB, sector_size=4096)]
    file_dir = tmp_path / "nfs-domain"
    file_dir.mkdir()
    block_sd, file_sd = new_id(), new_id()
    resp = await client.post("/domains", json={"uuid": block_sd, "type": "block",
                                               "location": devices, "ovf_stores": 1,
                                               "ovf_store_size": MiB})
    assert resp.status == 201, await resp.text()
    resp = await client.post("/domains", json={"uuid": file_sd, "type": "file",
                                               "location": str(file_dir)})
    assert resp.status == 201, await resp.text()
    resp = await client.put("/pool", json={
        "pool_id": new_id(), "map_version": 1, "master_domain": file_sd,
        "domains": {
            block_sd: {"type": "block", "location": devices, "status": "Active"},
            file_sd: {"type": "file", "location": str(file_dir), "status": "Active"},
        },
    })
    assert resp.status == 200, await resp.text()

    created: list[tuple[str, str, str, bytes]] = []
    # Enough volumes that the block domain spills onto its second device.
    for sd, fmt, size in [(block_sd, "raw", 12 * MiB), (block_sd, "raw", 10 * MiB),
                          (file_sd, "raw", 6 * MiB), (file_sd, "qcow2", 6 * MiB)]:
        img, vol = new_id(), new_id()
        resp = await client.post(f"/domains/{sd}/volumes", json={
            "img_id": img, "vol_id": vol, "size": size, "format": fmt})
        assert resp.status == 201, await resp.text()
        info = await resp.json()
        assert info["size"] == size and info["format"] == fmt
        if fmt == "raw":
            data = os.urandom(size // 2)
            ticket = new_id()
            resp = await client.put(f"/tickets/{ticket}", json={
                "uuid": ticket, "size": size, "ops": ["read", "write"], "timeout": 60,
                "sd_id": sd, "img_id": img, "vol_id": vol})
            assert resp.status == 200, await resp.text()
            resp = await client.put(f"/images/{ticket}", data=data)
            assert resp.status == 200, await resp.text()
            rng = {"Range": f"bytes=0-{len(data) - 1}"}
            resp = await client.get(f"/images/{ticket}", headers=rng)
            assert resp.status == 206 and await resp.read() == data
            # The volume is bounded: nothing past its end can be written.
            resp = await client.put(f"/images/{ticket}", data=b"x",
                                    headers={"Content-Range": f"bytes {size}-{size}/*"})
            assert resp.status == 416
            assert (await client.delete(f"/tickets/{ticket}")).status == 204
            created.append((sd, img, vol, data))

    block_devs = {v["path"] for v in (await (await client.get(
        f"/domains/{block_sd}/volumes")).json())["volumes"] if v["content"] == "DATA"}
    assert len(block_devs) == 2  # one volume on each loop device
    for sd, stores in ((block_sd, 1), (file_sd, 2)):
        listing = (await (await client.get(f"/domains/{sd}/volumes")).json())["volumes"]
        assert len(listing) == 2 + stores
        assert sum(v["content"] == "OVF_STORE" for v in listing) == stores

    # Resize and delete.
    sd, img, vol, _ = created[-1]
    resp = await client.patch(f"/domains/{sd}/images/{img}/volumes/{vol}", json={"size": 8 * MiB})
    assert resp.status == 200 and (await resp.json())["size"] == 8 * MiB
    for sd, img, vol, _ in created:
        resp = await client.delete(f"/domains/{sd}/images/{img}/volumes/{vol}")
        assert resp.status == 204
        resp = await client.get(f"/domains/{sd}/images/{img}/volumes/{vol}")
        assert resp.status == 404


async def test_volume_ops_gated_by_status(client: Client, tmp_path: Path) -> None:
    d = tmp_path / "dom"
    d.mkdir()
    sd = new_id()
    assert (await client.post("/domains", json={"uuid": sd, "type": "file",
                                                "location": str(d)})).status == 201
    body = {"img_id": new_id(), "vol_id": new_id(), "size": MiB}
    # Not in the map yet: 404.
    resp = await client.post(f"/domains/{sd}/volumes", json=body)
    assert resp.status == 404
    pool_id = new_id()
    for version, status, allowed in [(1, "Maintenance", False), (2, "Active", True)]:
        resp = await client.put("/pool", json={
            "pool_id": pool_id, "map_version": version,
            "master_domain": sd,
            "domains": {sd: {"type": "file", "location": str(d), "status": status}}})
        assert resp.status == 200, await resp.text()
        resp = await client.post(f"/domains/{sd}/volumes", json=body)
        assert (resp.status == 201) == allowed, await resp.text()
        if not allowed:
            assert resp.status == 409 and "Maintenance" in (await resp.json())["detail"]
    # Listing works on any domain in the map.
    assert (await client.get(f"/domains/{sd}/volumes")).status == 200


async def test_bad_domain_requests(client: Client, tmp_path: Path) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"uuid": "nope", "type": "file", "location": str(tmp_path)}, "malformed UUID"),
        ({"uuid": new_id(), "type": "file", "location": str(tmp_path / "missing")},
         "does not exist"),
        ({"uuid": new_id(), "type": "block", "location": [str(tmp_path)]},
         "not a block device"),
        ({"uuid": new_id(), "type": "tape", "location": str(tmp_path)}, "type must be"),
    ]
    for body, detail in cases:
        resp = await client.post("/domains", json=body)
        assert resp.status == 400, body
        assert detail in (await resp.json())["detail"]
    resp = await client.get("/domains/not-a-uuid/volumes")
    assert resp.status == 400


async def test_volume_legality_set_at_creation_and_by_patch(
    client: Client, tmp_path: Path
) -> None:
    """An upload creates its volume marked incomplete and marks it complete
    once verified: an interrupted one is then told apart."""
    d = tmp_path / "dom"
    d.mkdir()
    sd = new_id()
    assert (await client.post("/domains", json={"uuid": sd, "type": "file",
                                                "location": str(d)})).status == 201
    resp = await client.put("/pool", json={
        "pool_id": new_id(), "map_version": 1, "master_domain": sd,
        "domains": {sd: {"type": "file", "location": str(d), "status": "Active"}}})
    assert resp.status == 200, await resp.text()
    img, vol = new_id(), new_id()
    resp = await client.post(f"/domains/{sd}/volumes", json={
        "img_id": img, "vol_id": vol, "size": MiB, "legal": False})
    assert resp.status == 201 and (await resp.json())["legal"] is False
    url = f"/domains/{sd}/images/{img}/volumes/{vol}"
    assert (await (await client.get(url)).json())["legal"] is False
    resp = await client.patch(url, json={"legal": True})
    assert resp.status == 200 and (await resp.json())["legal"] is True
    assert (await (await client.get(url)).json())["legal"] is True
    resp = await client.patch(url, json={"size": 2 * MiB, "legal": False})
    body = await resp.json()
    assert resp.status == 200 and (body["size"], body["legal"]) == (2 * MiB, False)
    for bad, words in [({}, "takes"), ({"legal": "yes"}, "true or false"),
                       ({"legal": True, "colour": 1}, "takes"),
                       ({"size": "big"}, "must be an integer")]:
        resp = await client.patch(url, json=bad)
        assert resp.status == 400 and words in (await resp.json())["detail"], bad
    resp = await client.post(f"/domains/{sd}/volumes", json={
        "img_id": new_id(), "vol_id": new_id(), "size": MiB, "legal": 1})
    assert resp.status == 400 and "true or false" in (await resp.json())["detail"]
    assert (await (await client.get(url)).json())["legal"] is False  # the bad ones changed nothing
    # An OVF store's validity is its commit record: not a flag to set.
    store = next(v for v in (await (await client.get(f"/domains/{sd}/volumes")).json())[
        "volumes"] if v["content"] == "OVF_STORE")
    resp = await client.patch(
        f"/domains/{sd}/images/{store['img_uuid']}/volumes/{store['vol_uuid']}",
        json={"legal": False})
    assert resp.status == 403


async def stores_of(client: Client, sd: str, location: Any, kind: str, version: int) -> int:
    resp = await client.put("/pool", json={
        "pool_id": POOL_ID, "map_version": version, "master_domain": sd,
        "domains": {sd: {"type": kind, "location": location, "status": "Active"}}})
    assert resp.status == 200, await resp.text()
    listing = (await (await client.get(f"/domains/{sd}/volumes")).json())["volumes"]
    return sum(v["content"] == "OVF_STORE" for v in listing)


POOL_ID = new_id()


async def test_a_failed_create_can_be_retried(
    client: Client, tmp_path: Path, loop_device: Any
) -> None:
    """POST /domains formatted the location, then refused the OVF stores
    (a bad count, a size the devices cannot hold): the domain stayed without
    stores, and every retry answered 409, the location being a domain now."""
    d = tmp_path / "dom"
    d.mkdir()
    sd = new_id()
    resp = await client.post("/domains", json={"uuid": sd, "type": "file",
                                               "location": str(d), "ovf_stores": 0})
    assert resp.status == 400, await resp.text()
    assert sorted(os.listdir(d)) == []  # nothing formatted
    resp = await client.post("/domains", json={"uuid": sd, "type": "file",
                                               "location": str(d), "ovf_stores": 1})
    assert resp.status == 201, await resp.text()
    assert await stores_of(client, sd, str(d), "file", 1) == 1

    devices = [loop_device(8 * MiB, sector_size=4096)]
    sd = new_id()
    body = {"uuid": sd, "type": "block", "location": devices, "ovf_stores": 2}
    resp = await client.post("/domains", json={**body, "ovf_store_size": 64 * MiB})
    assert resp.status == 507, await resp.text()  # formatted, but no room for the stores
    resp = await client.post("/domains", json={**body, "ovf_store_size": MiB})
    assert resp.status == 201, await resp.text()  # the retry finishes it
    assert await stores_of(client, sd, devices, "block", 2) == 2
    # Another domain's devices are still refused.
    resp = await client.post("/domains", json={**body, "uuid": new_id(),
                                               "ovf_store_size": MiB})
    assert resp.status == 409, await resp.text()


async def test_a_create_that_crashed_before_its_marker_can_be_retried(
    client: Client, tmp_path: Path
) -> None:
    """A crash between the images directory and domain.json left a
    directory that was "not empty" to every retry."""
    d = tmp_path / "dom"
    (d / "images").mkdir(parents=True)
    (d / ".tmp-0123456789abcdef.part").write_bytes(b"")
    sd = new_id()
    resp = await client.post("/domains", json={"uuid": sd, "type": "file",
                                               "location": str(d), "ovf_stores": 1})
    assert resp.status == 201, await resp.text()
    # An images directory with something in it is someone's files.
    d2 = tmp_path / "dom2"
    (d2 / "images").mkdir(parents=True)
    (d2 / "images" / "disk.raw").write_bytes(b"x")
    resp = await client.post("/domains", json={"uuid": new_id(), "type": "file",
                                               "location": str(d2)})
    assert resp.status == 409, await resp.text()
