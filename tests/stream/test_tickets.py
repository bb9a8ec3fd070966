"""The control API: tickets as ovirt-imageio defines them, and where they may point."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from stream.app import make_app
from stream.config import Config
from stream.state import AUTH
from tests.conftest import LoopDeviceFactory
from volume.errors import Error

from .conftest import AddTicket, Client, MiB, open_put


def ticket_json(path: Path | str, **fields: Any) -> dict[str, Any]:
    t: dict[str, Any] = {"uuid": str(uuid.uuid4()), "size": 4096, "url": f"file://{path}",
                         "ops": ["read", "write"], "timeout": 300}
    t.update(fields)
    return t


async def test_add_get_delete(client: Client, image: Any) -> None:
    path = image(4096)
    t = ticket_json(path, transfer_id="transfer-1", filename="disk.raw", sparse=True)
    resp = await client.put(f"/tickets/{t['uuid']}", json=t)
    assert resp.status == 200
    info = await (await client.get(f"/tickets/{t['uuid']}")).json()
    for key in ("uuid", "size", "url", "ops", "timeout", "transfer_id", "filename", "sparse"):
        assert info[key] == t[key]
    assert info["active"] is False and info["canceled"] is False
    assert info["inactivity_timeout"] == 60
    resp = await client.delete(f"/tickets/{t['uuid']}")
    assert resp.status == 204
    assert (await client.get(f"/tickets/{t['uuid']}")).status == 404
    # Idempotent, as imageio's.
    assert (await client.delete(f"/tickets/{t['uuid']}")).status == 204
    assert (await client.get(f"/images/{t['uuid']}")).status == 403


async def test_delete_all(client: Client, image: Any, add_ticket: AddTicket) -> None:
    ids = [await add_ticket(image(4096)) for _ in range(3)]
    assert (await client.delete("/tickets/")).status == 204
    for i in ids:
        assert (await client.get(f"/tickets/{i}")).status == 404


async def test_delete_all_removes_the_idle_tickets_while_one_is_busy(
    client: Client, image: Any, add_ticket: AddTicket
) -> None:
    """One transfer that does not stop in time makes DELETE /tickets/ a
    409, but every other ticket is removed; it was stopped at the first
    busy ticket, leaving the rest usable (and retries never got past it)."""
    busy = await add_ticket(image(8192))
    idle = [await add_ticket(image(4096)) for _ in range(2)]
    _, writer = await open_put(client, f"/images/{busy}", 8192, b"x" * 100)
    try:
        for _ in range(100):
            if (await (await client.get(f"/tickets/{busy}")).json())["active"]:
                break
            await asyncio.sleep(0.02)
        resp = await client.delete("/tickets/")
        assert resp.status == 409
        assert busy[:8] in await resp.text()
        for t in idle:
            assert (await client.get(f"/tickets/{t}")).status == 404
            assert (await client.get(f"/images/{t}")).status == 403
        assert (await (await client.get(f"/tickets/{busy}")).json())["canceled"] is True
    finally:
        writer.close()


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH"])
async def test_empty_ticket_id_is_a_400_as_in_imageio(
    client: Client, image: Any, add_ticket: AddTicket, method: str
) -> None:
    """imageio lists no tickets: ``/tickets/`` without an id is its 400."""
    await add_ticket(image(4096))
    resp = await client.request(method, "/tickets/", data=b"{}" if method != "GET" else None)
    assert resp.status == 400
    assert await resp.text() == "Ticket id is required\n"


@pytest.mark.parametrize("body,detail", [
    pytest.param("not json", "Invalid JSON", id="not-json"),
    pytest.param([1, 2], "expecting an object", id="not-object"),
    pytest.param({"uuid": "x", "size": 1, "url": "file:///x", "timeout": 1},
                 "Required ticket parameter is missing: ops", id="missing-ops"),
    pytest.param({"uuid": "x", "size": "big", "url": "file:///x", "timeout": 1, "ops": ["read"]},
                 "Invalid value for 'size'", id="size-not-int"),
    pytest.param({"uuid": "x", "size": -1, "url": "file:///x", "timeout": 1, "ops": ["read"]},
                 "must be >= 0", id="negative-size"),
    pytest.param({"uuid": "x", "size": 1, "url": "file:///x", "timeout": 1, "ops": ["fly"]},
                 "Invalid value for 'ops'", id="bad-op"),
    pytest.param({"uuid": "x", "size": 1, "url": "s3://bucket/x", "timeout": 1, "ops": ["read"]},
                 "Unsupported url scheme: s3", id="s3"),
    # A NUL in the path made a 500; CR LF in the filename went into every
    # GET's Content-Disposition, which aiohttp refused by dropping the answer.
    pytest.param({"uuid": "x", "size": 1, "url": "file:///x%00y", "timeout": 1,
                  "ops": ["read"]}, "'url': control characters", id="nul-in-url"),
    pytest.param({"uuid": "x", "size": 1, "url": "file:///x", "timeout": 1, "ops": ["read"],
                  "filename": "a\r\nX-Injected: 1"}, "'filename': control characters",
                 id="crlf-in-filename"),
    pytest.param({"uuid": "x", "size": 1, "url": "file:///x", "timeout": 1, "ops": ["read"],
                  "transfer_id": "t\n2"}, "'transfer_id': control characters",
                 id="newline-in-transfer-id"),
])
async def test_invalid_ticket(client: Client, body: Any, detail: str) -> None:
    if isinstance(body, str):
        resp = await client.put("/tickets/x", data=body)
    else:
        resp = await client.put("/tickets/x", json=body)
    assert resp.status == 400
    assert detail in await resp.text()


async def test_path_outside_domain_is_refused(client: Client, tmp_path: Path) -> None:
    outside = tmp_path / "outside.raw"
    outside.write_bytes(b"secret")
    t = ticket_json(outside)
    resp = await client.put(f"/tickets/{t['uuid']}", json=t)
    assert resp.status == 403
    assert "not inside a registered storage domain" in await resp.text()


async def test_symlink_escaping_domain_is_refused(
    client: Client, domain_dir: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.raw"
    outside.write_bytes(b"secret")
    link = domain_dir / "innocent.raw"
    os.symlink(outside, link)
    t = ticket_json(link)
    resp = await client.put(f"/tickets/{t['uuid']}", json=t)
    assert resp.status == 403


async def test_dotdot_escaping_domain_is_refused(
    client: Client, domain_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "outside.raw").write_bytes(b"secret")
    rel = os.path.relpath(tmp_path / "outside.raw", domain_dir)
    t = ticket_json(f"{domain_dir}/{rel}")
    resp = await client.put(f"/tickets/{t['uuid']}", json=t)
    assert resp.status == 403


async def test_missing_file_and_directory_are_refused(client: Client, domain_dir: Path) -> None:
    t = ticket_json(domain_dir / "missing.raw")
    resp = await client.put(f"/tickets/{t['uuid']}", json=t)
    assert resp.status == 400
    assert "does not exist" in await resp.text()
    t = ticket_json(domain_dir)
    resp = await client.put(f"/tickets/{t['uuid']}", json=t)
    assert resp.status == 400


async def test_patch_ticket_validation(client: Client, image: Any, add_ticket: AddTicket) -> None:
    ticket = await add_ticket(image(4096))
    assert (await client.patch(f"/tickets/{ticket}", json={"timeout": -1})).status == 400
    assert (await client.patch("/tickets/nope", json={"timeout": 1})).status == 404


async def test_engine_routes_need_the_engine_credential(
    aiohttp_client: Any, cfg: Config
) -> None:
    app: web.Application = make_app(cfg)  # no trust: the data port wants the token
    c = await aiohttp_client(app)
    resp = await c.put("/tickets/x", json={})
    assert resp.status == 401
    assert "engine's credential" in await resp.text()
    for method, path in [("GET", "/pool"), ("GET", "/stats"), ("PUT", "/pool"),
                         ("POST", "/domains")]:
        resp = await c.request(method, path, headers={"Authorization": "Bearer wrong"})
        assert resp.status == 401, path
        assert (await resp.json())["error"] == "unauthorized"
    token_file = Path(cfg.daemon.data_dir) / "engine.token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    resp = await c.get("/pool", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200
    assert (await c.get("/info/")).status == 200  # public


async def test_unregistered_block_device_is_refused(
    client: Client, domain_dir: Path, loop_device: LoopDeviceFactory
) -> None:
    device = loop_device(4 * MiB)
    # Inside the file domain, but pointing at the device: its real path
    # (after symlinks) is the device; a device node made in the domain has
    # a path inside it, and is still a block device no domain registered.
    link = domain_dir / "disk.raw"
    os.symlink(device, link)
    node = domain_dir / "node.raw"
    os.mknod(node, 0o600 | stat.S_IFBLK, os.stat(device).st_rdev)
    for path in (device, link, node):
        t = ticket_json(path, size=4 * MiB)
        resp = await client.put(f"/tickets/{t['uuid']}", json=t)
        assert resp.status == 403, (path, await resp.text())
        assert await resp.text() == (
            f"Invalid ticket: {path} is not inside a registered storage domain\n")
        assert (await client.get(f"/tickets/{t['uuid']}")).status == 404
    # Registered with a block domain, the same device is a valid ticket url
    # for reading (writing: tests/stream/test_store_guard.py).
    block_sd, file_sd = str(uuid.uuid4()), domain_dir.parent.name
    resp = await client.post("/domains", json={"uuid": block_sd, "type": "block",
                                               "location": [device], "ovf_stores": 1,
                                               "ovf_store_size": MiB})
    assert resp.status == 201, await resp.text()
    resp = await client.put("/pool", json={
        "pool_id": str(uuid.uuid4()), "map_version": 1, "master_domain": file_sd,
        "domains": {block_sd: {"type": "block", "location": [device], "status": "Active"},
                    file_sd: {"type": "file", "location": str(domain_dir.parent),
                              "status": "Active"}}})
    assert resp.status == 200, await resp.text()
    t = ticket_json(device, size=4 * MiB, ops=["read"])
    resp = await client.put(f"/tickets/{t['uuid']}", json=t)
    assert resp.status == 200, await resp.text()


async def test_readd_granting_write_reopens_the_volume(
        client: Client, image: Any, add_ticket: AddTicket) -> None:
    """A re-add keeps the ticket and its open volume (vdsm retries), but one
    that grants write to a ticket whose volume was opened read-only must let
    writes through: the volume is opened again, read-write, and the old one
    is closed with the ticket."""
    path = image(4096)
    t = await add_ticket(path, ops=["read"])
    assert (await client.get(f"/images/{t}")).status == 200  # opens it read-only
    app = client.app
    assert app is not None
    ticket = app[AUTH].get(t)
    first = ticket.volume
    assert first is not None and first.readonly
    body = ticket_json(path, uuid=t, ops=["read", "write"])
    assert (await client.put(f"/tickets/{t}", json=body)).status == 200
    assert app[AUTH].get(t) is ticket  # renewed, not replaced
    resp = await client.put(f"/images/{t}", data=b"x" * 4096)
    assert resp.status == 200, await resp.text()
    zero = await client.patch(f"/images/{t}", json={"op": "zero", "offset": 0, "size": 512})
    assert zero.status == 200, await zero.text()
    assert Path(path).read_bytes() == b"\0" * 512 + b"x" * 3584
    assert (await client.delete(f"/tickets/{t}")).status == 204
    assert ticket.take_volumes() == []  # both closed and dropped by the delete
    with pytest.raises(Error, match="Bad file descriptor"):  # the old one is closed
        first.readinto(0, memoryview(bytearray(512)))


async def test_readd_granting_write_keeps_reads_when_the_file_cannot_be_written(
        client: Client, image: Any, add_ticket: AddTicket) -> None:
    """The read-only volume was dropped before opening it read-write; when
    that open failed (an immutable file), GETs that worked got 403 too."""
    path = image(data=b"r" * 4096)
    t = await add_ticket(path, ops=["read"])
    assert (await client.get(f"/images/{t}")).status == 200
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        body = ticket_json(path, uuid=t, ops=["read", "write"])
        assert (await client.put(f"/tickets/{t}", json=body)).status == 200
        resp = await client.get(f"/images/{t}")
        assert resp.status == 200 and await resp.read() == b"r" * 4096
        assert (await client.put(f"/images/{t}", data=b"w" * 4096)).status == 403
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    assert (await client.delete(f"/tickets/{t}")).status == 204
