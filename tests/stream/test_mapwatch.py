"""An OVF store update in progress and the pool map (stream.mapwatch).

The map is checked when a PUT starts; a map put in force while the update
runs and no longer allows OVF store writes to its domain must stop it:
uncommitted while the body comes (or before the commit), the copies into
the other stores after the answer.  Maps that still allow the writes leave
it alone.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from stream.config import Config
from volume._ovfguard import guard
from volume.ovfarea import StoreArea
from volume.ovfupdate import Update

from .conftest import Client
from .test_ovf import build_tar, push, served

MiB = 1 << 20
POOL = str(uuid.uuid4())
#: How long a stopped PUT may take to answer while its body is cut off
#: (it answers at once; the code before the fix never answered there).
EARLY = 5.0


@pytest.fixture
def cfg(cfg: Config) -> Config:
    cfg.ovf.buffer_size = 1 * MiB  # the first half of a body fills buffers
    return cfg


class Maps:
    """Pool maps of ``sd`` (this host's file domain) and another domain."""

    def __init__(self, client: Client, sd: str, sd_dir: Path, other_dir: Path) -> None:
        self.client = client
        self.sd = sd
        self.other = str(uuid.uuid4())
        self._dirs = {sd: str(sd_dir), self.other: str(other_dir)}
        self.version = 0

    async def put(self, status: str | None, other_status: str = "Active") -> None:
        """The next version: ``sd`` with ``status`` (left out if None)."""
        self.version += 1
        statuses = {self.other: other_status}
        if status is not None:
            statuses[self.sd] = status
        resp = await self.client.put("/pool", json={
            "pool_id": POOL, "map_version": self.version, "master_domain": self.other,
            "domains": {sd: {"type": "file", "location": self._dirs[sd], "status": st}
                        for sd, st in statuses.items()}})
        assert resp.status == 200, await resp.text()


@pytest.fixture
async def maps(client: Client, sd: str, domain_dir: Path, tmp_path: Path) -> Maps:
    """Version 1 in force: both domains Active."""
    other = tmp_path / "other-domain"
    other.mkdir()
    m = Maps(client, sd, domain_dir.parent, other)
    await m.put("Active")
    return m


async def put_path(client: Client, route: str, sd: str) -> tuple[str, dict[str, str]]:
    if route == "engine":
        return f"/domains/{sd}/ovf-store", {"X-Ovf-Manifest": "required"}
    info = await (await client.get(f"/domains/{sd}/ovf-store/info")).json()
    return "/", {"Storage-Pool-Id": POOL, "Storage-Domain-Id": sd,
                 "Image-Id": info["stores"][0]["img_uuid"], "Volume-Id": str(uuid.uuid4())}


async def begin_put(client: Client, route: str, sd: str, body: bytes
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A PUT of ``body`` with its first half sent."""
    path, headers = await put_path(client, route, sd)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                 f"{head}\r\n".encode() + body[: len(body) // 2])
    await writer.drain()
    return reader, writer


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, Any]:
    head = await reader.readuntil(b"\r\n\r\n")
    found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    assert found is not None, head
    return int(head.split()[1]), json.loads(await reader.readexactly(int(found.group(1))))


async def updates_begun(caplog: pytest.LogCaptureFixture, count: int) -> None:
    """Return once ``count`` OVF updates have begun (their target marked)."""
    for _ in range(400):
        if sum("OVF update began" in r.getMessage() for r in caplog.records) >= count:
            return
        await asyncio.sleep(0.025)
    raise AssertionError("the update never began")


async def valid_generations(client: Client, sd: str) -> list[int]:
    info = await (await client.get(f"/domains/{sd}/ovf-store/info")).json()
    return sorted(s["record"]["generation"] for s in info["stores"] if s["valid"])


REFUSED = {
    "removed": (None, 404, "not-in-pool", "Storage domain {sd} is not in the pool map"),
    "maintenance": ("Maintenance", 409, "domain-not-available",
                    "Storage domain {sd} is Maintenance: OVF store writes are not allowed"),
}


@pytest.mark.parametrize("route", ["engine", "vdsm"])
@pytest.mark.parametrize("change", list(REFUSED))
async def test_map_refusing_writes_stops_the_put_uncommitted(
    client: Client, sd: str, maps: Maps, caplog: pytest.LogCaptureFixture,
    route: str, change: str,
) -> None:
    new_status, status, code, why = REFUSED[change]
    first, _ = build_tar(sd)
    assert (await push(client, sd, first))[0] == 200
    tar, _ = build_tar(sd, count=2000)
    assert len(tar) > 2 * MiB + 4096  # its first half fills a buffer or more
    reader, writer = await begin_put(client, route, sd, tar)
    try:
        await updates_begun(caplog, 2)
        await maps.put(new_status)  # v2
        try:
            answer = await asyncio.wait_for(read_answer(reader), EARLY)
        except TimeoutError:  # not stopped: it still waits for its body
            writer.write(tar[len(tar) // 2:])
            await writer.drain()
            answer = await asyncio.wait_for(read_answer(reader), 30)
    finally:
        writer.close()
    detail = why.format(sd=sd)
    assert answer == (status, {
        "error": code,
        "detail": f"the pool map changed during the OVF store update (map version 2): "
                  f"{detail}"})
    # A new PUT now gets the same error class, without the "changed".
    assert await push(client, sd, tar) == (status, {"error": code, "detail": detail})
    if change == "removed":
        await maps.put("Active")  # v3: back, to look at its stores
    # Nothing committed: the previous archive is served, the store the
    # update wrote stays marked updating.
    assert await served(client, sd) == (1, first)
    assert await valid_generations(client, sd) == [1]
    if change == "maintenance":
        await maps.put("Active")
    # The update ended: the next one goes through.
    code2, body = await push(client, sd, tar)
    assert (code2, body["generation"]) == (200, 2), body


@pytest.mark.parametrize("change", [
    pytest.param(("Active", "Maintenance"), id="other-domain-changed"),
    pytest.param(("Active", "Active"), id="version-bump-same-status"),
    pytest.param(("PreparingForMaintenance", "Active"), id="leaving-but-ovf-writable"),
])
async def test_map_still_allowing_writes_leaves_the_put_alone(
    client: Client, sd: str, maps: Maps, caplog: pytest.LogCaptureFixture,
    change: tuple[str, str],
) -> None:
    first, _ = build_tar(sd)
    assert (await push(client, sd, first))[0] == 200
    tar, _ = build_tar(sd, count=2000)
    reader, writer = await begin_put(client, "engine", sd, tar)
    try:
        await updates_begun(caplog, 2)
        await maps.put(*change)
        writer.write(tar[len(tar) // 2:])
        await writer.drain()
        status, body = await asyncio.wait_for(read_answer(reader), 30)
    finally:
        writer.close()
    assert (status, body["generation"], body["copies_pending"]) == (200, 2, 1), body
    assert await served(client, sd) == (2, tar)
    info = await (await client.get(f"/domains/{sd}/ovf-store/info")).json()
    assert info["copy_errors"] == []
    assert [s["record"]["generation"] for s in info["stores"] if s["valid"]] == [2, 2]


async def test_map_change_just_before_the_commit_is_caught(
    client: Client, sd: str, maps: Maps
) -> None:
    """The whole body is in; the map changes while the commit begins (here:
    held at the sync after the archive, the last step before its head and
    record are written)."""
    first, _ = build_tar(sd)
    assert (await push(client, sd, first))[0] == 200
    tar, _ = build_tar(sd, count=20)
    reached, release = threading.Event(), threading.Event()
    real = StoreArea.flush

    def held_flush(self: StoreArea) -> None:
        if not reached.is_set():
            reached.set()
            release.wait(20)
        real(self)

    with mock.patch.object(StoreArea, "flush", held_flush):
        pushed = asyncio.create_task(push(client, sd, tar))
        for _ in range(400):
            if reached.is_set():
                break
            await asyncio.sleep(0.025)
        assert reached.is_set()
        await maps.put("Maintenance")
        release.set()
        status, body = await asyncio.wait_for(pushed, 30)
    assert (status, body["error"]) == (409, "domain-not-available"), body
    assert body["detail"].startswith("the pool map changed during the OVF store update")
    assert await served(client, sd) == (1, first)
    assert await valid_generations(client, sd) == [1]


async def test_copies_do_not_start_after_the_map_refuses_writes(
    client: Client, sd: str, maps: Maps
) -> None:
    """The answer went out with the target committed; the copy into the
    other store waits for a reader of that store.  The map moves the domain
    to Maintenance meanwhile: the copy never starts, and that store keeps
    the previous archive, intact."""
    first, _ = build_tar(sd)
    assert (await push(client, sd, first))[0] == 200
    info = await (await client.get(f"/domains/{sd}/ovf-store/info")).json()
    # The next update writes the oldest store first, then copies into this one.
    newest = max(info["stores"], key=lambda s: (s["record"]["committed_at"], s["index"]))
    key = f"{newest['img_uuid']}/{newest['vol_uuid']}"
    domain = guard(sd)
    hold = domain.add_reader(key)  # as a GET of that store streaming
    assert hold is not None
    try:
        tar, _ = build_tar(sd, count=20)
        status, body = await push(client, sd, tar)
        assert (status, body["generation"], body["copies_pending"]) == (200, 2, 1), body
        await maps.put("Maintenance")
    finally:
        domain.remove_reader(hold)
    info = await (await client.get(f"/domains/{sd}/ovf-store/info")).json()  # copies done
    assert info["copy_errors"] == [
        f"store {newest['index']} ({key}) keeps its previous archive: the pool map changed "
        f"during the OVF store update (map version 2): Storage domain {sd} is Maintenance: "
        "OVF store writes are not allowed"]
    records = {s["index"]: (s["valid"], s["record"]["generation"]) for s in info["stores"]}
    assert records[newest["index"]] == (True, 1)
    assert sorted(records.values()) == [(True, 1), (True, 2)]
    assert await served(client, sd) == (2, tar)  # committed before the map changed


async def test_a_copy_under_way_stops_and_its_store_is_never_served(
    client: Client, sd: str, maps: Maps
) -> None:
    """The map refuses writes while the copy into the other store writes
    (held in its first write): the copy stops before its commit, and that
    store stays marked updating, never taken by a reader."""
    first, _ = build_tar(sd)
    assert (await push(client, sd, first))[0] == 200
    tar, _ = build_tar(sd, count=20)
    hold, reached, release = threading.Event(), threading.Event(), threading.Event()
    real = StoreArea.write

    def held_write(self: StoreArea, offset: int, data: memoryview) -> None:
        if hold.is_set() and not reached.is_set():  # the copy's first write
            reached.set()
            release.wait(20)
        real(self, offset, data)

    real_seal = Update.seal

    def seal(self: Update, *args: Any, **kwargs: Any) -> Any:
        record = real_seal(self, *args, **kwargs)
        hold.set()  # the target is committed: what is written next is the copy
        return record

    with mock.patch.object(StoreArea, "write", held_write), \
            mock.patch.object(Update, "seal", seal):
        status, body = await push(client, sd, tar)
        assert (status, body["generation"], body["copies_pending"]) == (200, 2, 1), body
        for _ in range(400):
            if reached.is_set():
                break
            await asyncio.sleep(0.025)
        await maps.put("Maintenance")
        release.set()
        info = await (await client.get(f"/domains/{sd}/ovf-store/info")).json()
    assert reached.is_set()
    (error,) = info["copy_errors"]
    assert "stays marked updating: the pool map changed during the OVF store update" in error
    states = sorted((s["valid"], s["record"]["generation"], s["record"]["updating"])
                    for s in info["stores"])
    assert states == [(False, 2, True), (True, 2, False)], info["stores"]
    assert await served(client, sd) == (2, tar)
