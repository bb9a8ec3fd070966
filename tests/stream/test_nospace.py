"""No space left: a real, tiny filesystem fills up under an upload."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Client

MiB = 1 << 20


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mounting a 4 MiB tmpfs needs root: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_upload_past_free_space_is_507(client: Client, tiny_fs: Path) -> None:
    sd = str(uuid.uuid4())
    resp = await client.put("/pool", json={
        "pool_id": str(uuid.uuid4()), "map_version": 1, "master_domain": sd,
        "domains": {sd: {"type": "file", "location": str(tiny_fs), "status": "Active"}},
    })
    assert resp.status == 200, await resp.text()
    target = tiny_fs / "disk.raw"
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
