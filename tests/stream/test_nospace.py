"""No space left: a real, tiny filesystem fills up under an upload."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from .conftest import Client

MiB = 1 << 20


async def test_upload_past_free_space_is_507(client: Client, tiny_fs: Path) -> None:
    sd = str(uuid.uuid4())
    resp = await client.put("/pool", json={
        "pool_id": str(uuid.uuid4()), "map_version": 1, "master_domain": sd,
        "domains": {sd: {"type": "file", "location": str(tiny_fs), "status": "Active"}},
    })
    assert resp.status == 200, await resp.text()
    (tiny_fs / "images").mkdir()
    target = tiny_fs / "images" / "disk.raw"
    target.write_bytes(b"")
    size = 16 * MiB
    ticket: dict[str, Any] = {"uuid": str(uuid.uuid4()), "size": size, "ops": ["write"],
                              "timeout": 60, "url": f"file://{target}"}
    assert (await client.put(f"/tickets/{ticket['uuid']}", json=ticket)).status == 200
    resp = await client.put(f"/images/{ticket['uuid']}", data=b"\x01" * size)
    assert resp.status == 507
    text = await resp.text()
    assert text.strip() == "no space left on the storage"
    # The daemon goes on: a small write within the space still works.
    resp = await client.put(f"/images/{ticket['uuid']}", data=b"ok",
                            headers={"Content-Range": "bytes 0-1/*"})
    assert resp.status == 200
