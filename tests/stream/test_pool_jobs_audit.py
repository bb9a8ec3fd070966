"""Audit of the pool map and copy jobs: bad input, maps that change under a
running copy, sources that are not what they claim, and many jobs at once."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from stream import jobs as jobs_mod
from stream.pool import Access, parse
from stream.state import POOL
from stream.wire.blkhash import StreamingBlockHash
from stream.wire.poolmap import MAX_MAP_VERSION
from volume.filedomain import FileDomain

from .conftest import Client
from .test_copy import (
    FaultySource,
    add_domain,
    legal,
    new_id,
    new_volume,
    read_image,
    start_copy,
    wait,
    write_image,
)

MiB = 1 << 20
POOL_ID = new_id()

Server = Callable[..., Any]


def pool_map(version: int, domains: dict[str, tuple[Path | str, str]]) -> dict[str, Any]:
    return {"pool_id": POOL_ID, "map_version": version, "master_domain": None,
            "domains": {sd: {"type": "file", "location": str(loc), "status": status}
                        for sd, (loc, status) in domains.items()}}


async def put_pool(client: Client, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    resp = await client.put("/pool", json=body)
    return resp.status, await resp.json()


@pytest.fixture
async def domains(client: Client, tmp_path: Path) -> tuple[str, str, Path, Path]:
    """Two Active file domains in pool map version 1: (sa, sb, dir a, dir b)."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    sa, sb = await add_domain(client, a), await add_domain(client, b)
    status, body = await put_pool(client, pool_map(1, {sa: (a, "Active"), sb: (b, "Active")}))
    assert status == 200, body
    return sa, sb, a, b


async def serve(aiohttp_server: Server, app: web.Application) -> str:
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}/images/t"


# -- the pool map


async def test_nul_in_a_location_is_a_clear_400(client: Client, tmp_path: Path) -> None:
    before = await (await client.get("/pool")).json()
    status, body = await put_pool(client, pool_map(1, {new_id(): (f"{tmp_path}\0x", "Active")}))
    assert (status, body["error"]) == (400, "invalid-request"), body
    assert "absolute path" in body["detail"]
    assert await (await client.get("/pool")).json() == before
    resp = await client.post("/domains", json={"uuid": new_id(), "type": "file",
                                               "location": f"{tmp_path}\0x"})
    assert resp.status == 400, await resp.text()
    resp = await client.post("/domains", json={"uuid": new_id(), "type": "block",
                                               "location": ["/dev/loop0\0"]})
    assert resp.status == 400, await resp.text()


async def test_domain_location_is_never_relative_to_the_daemon(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "relative").mkdir()
    resp = await client.post("/domains", json={"uuid": new_id(), "type": "file",
                                               "location": "relative"})
    assert resp.status == 400, await resp.text()
    assert "absolute" in (await resp.json())["detail"]
    assert os.listdir(tmp_path / "relative") == []  # nothing formatted there


async def test_map_version_fits_the_engine(client: Client, domains: Any) -> None:
    """The engine keeps the version in a signed 64-bit integer: a host that
    took a bigger one could never be brought back in sync."""
    sa, _, a, _ = domains
    status, body = await put_pool(client, pool_map(MAX_MAP_VERSION + 1, {sa: (a, "Active")}))
    assert status == 400 and "map_version" in body["detail"], body
    assert (await (await client.get("/pool")).json())["map_version"] == 1
    status, body = await put_pool(client, pool_map(MAX_MAP_VERSION, {sa: (a, "Active")}))
    assert status == 200 and body["map_version"] == MAX_MAP_VERSION, body


async def test_moved_domain_is_not_judged_by_its_old_location(
    client: Client, domains: Any, tmp_path: Path
) -> None:
    """The engine fixes a domain's location in a new map: the failed health
    of the old location must not refuse I/O on the new one."""
    sa, sb, a, b = domains
    assert client.app is not None
    mgr = client.app[POOL]
    moved = tmp_path / "moved"
    os.rename(b, moved)
    await mgr.monitor.check_all()
    assert mgr.monitor.health[sb].reachable is False
    with pytest.raises(Exception, match="unreachable"):
        mgr.check(sb, Access.WRITE)
    assert await mgr.apply(parse(pool_map(2, {sa: (a, "Active"), sb: (moved, "Active")})))
    mgr.check(sb, Access.WRITE)  # the new location is not known to be bad
    assert mgr.stats()["domains"][sb]["checked"] is False
    await mgr.monitor.check_all()
    assert mgr.stats()["domains"][sb]["reachable"] is True


async def test_malformed_and_huge_bodies_are_clear_400s(client: Client) -> None:
    for body in [b"[" * 60000, b'{"pool_id": ', b"\xff\xfe", b'"a string"']:
        resp = await client.put("/pool", data=body)
        assert resp.status == 400, (body[:20], await resp.text())
        assert (await resp.json())["error"] == "invalid-request"
    resp = await client.put("/pool", data=b" " * (1 << 20))
    assert resp.status == 413, await resp.text()
    assert (await resp.json())["error"] != "internal-error"


# -- copy requests refused before anything changes


@pytest.mark.parametrize("cafile", ["/nonexistent/ca.pem", 5, "/etc/hostname"],
                         ids=["missing", "not-a-name", "not-pem"])
async def test_bad_cafile_is_a_400(client: Client, domains: Any, cafile: Any) -> None:
    _, sb, _, _ = domains
    dst = await new_volume(client, sb, MiB)
    resp = await client.post("/jobs/copy", json={
        "source": {"url": "https://127.0.0.1:1/images/t", "cafile": cafile},
        "destination": dst})
    assert resp.status == 400, await resp.text()
    assert "cafile" in (await resp.json())["detail"]
    assert await legal(client, dst)


async def test_copy_into_its_own_source_is_refused(client: Client, domains: Any) -> None:
    sa, _, _, _ = domains
    vol = await new_volume(client, sa, MiB)
    resp = await client.post("/jobs/copy", json={"source": vol, "destination": vol})
    assert resp.status == 400, await resp.text()
    assert "same volume" in (await resp.json())["detail"]
    assert await legal(client, vol)


async def test_smaller_destination_is_refused_and_left_legal(
    client: Client, domains: Any
) -> None:
    sa, sb, _, _ = domains
    src, dst = await new_volume(client, sa, 4 * MiB), await new_volume(client, sb, 2 * MiB)
    resp = await client.post("/jobs/copy", json={"source": src, "destination": dst})
    assert resp.status == 400, await resp.text()
    assert "smaller" in (await resp.json())["detail"]
    assert await legal(client, dst)  # untouched: not marked incomplete


async def test_incomplete_source_is_refused(
    client: Client, domains: Any, aiohttp_server: Server
) -> None:
    """A volume a failed copy left incomplete is no source: its copy would
    be marked complete."""
    sa, sb, _, _ = domains
    data = os.urandom(4 * MiB)
    broken = await new_volume(client, sa, len(data))
    url = await serve(aiohttp_server, FaultySource(data, die_at=2 * MiB).app())
    job = await wait(client, await start_copy(client, {"url": url}, broken))
    assert job["state"] == "failed" and not await legal(client, broken)
    dst = await new_volume(client, sb, len(data))
    resp = await client.post("/jobs/copy", json={"source": broken, "destination": dst})
    assert resp.status == 409, await resp.text()
    assert "incomplete" in (await resp.json())["detail"]
    assert await legal(client, dst)


async def test_one_job_per_volume_written(
    client: Client, domains: Any, aiohttp_server: Server
) -> None:
    sa, sb, _, _ = domains
    data = os.urandom(4 * MiB)
    source = FaultySource(data, pause_at=MiB)
    url = await serve(aiohttp_server, source.app())
    dst = await new_volume(client, sb, len(data))
    first = await start_copy(client, {"url": url}, dst)
    await asyncio.wait_for(source.paused.wait(), 10)
    resp = await client.post("/jobs/copy", json={"source": {"url": url}, "destination": dst})
    assert resp.status == 409, await resp.text()
    assert first in (await resp.json())["detail"]
    other = await new_volume(client, sa, len(data))
    resp = await client.post("/jobs/copy", json={"source": dst, "destination": other})
    assert resp.status == 409, await resp.text()  # reading what is being written
    source.resume.set()
    job = await wait(client, first)
    assert job["state"] == "done", job
    assert await read_image(client, dst, len(data)) == data


# -- the pool map changes under a running copy


@pytest.mark.parametrize("leaves", ["Maintenance", "PreparingForMaintenance", None],
                         ids=["maintenance", "preparing", "left-the-map"])
async def test_destination_leaving_active_stops_the_copy(
    client: Client, domains: Any, aiohttp_server: Server, leaves: str | None
) -> None:
    sa, sb, a, b = domains
    data = os.urandom(8 * MiB)
    dst = await new_volume(client, sb, len(data))
    source = FaultySource(data, pause_at=2 * MiB)
    job_id = await start_copy(client, {"url": await serve(aiohttp_server, source.app())}, dst)
    await asyncio.wait_for(source.paused.wait(), 10)
    new = {sa: (a, "Active")} | ({sb: (b, leaves)} if leaves else {})
    status, body = await put_pool(client, pool_map(2, new))
    assert status == 200, body
    source.resume.set()  # a copy still going would now finish
    job = await wait(client, job_id)
    assert job["state"] == "failed", job
    assert job["error"].startswith(f"the pool map changed: Storage domain {sb} "), job
    assert (leaves or "not in the pool map") in job["error"]
    assert job["bytes_done"] < len(data)
    if leaves:  # still in the map: its volumes can be looked at
        assert not await legal(client, dst)


class GatedSource(FaultySource):
    """A source whose ranged GETs all wait for ``release``; ``full`` is set
    once ``count`` of them wait."""

    def __init__(self, data: bytes, count: int) -> None:
        super().__init__(data)
        self.count, self.in_flight = count, 0
        self.full, self.release = asyncio.Event(), asyncio.Event()

    async def get(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        if self.in_flight == self.count:
            self.full.set()
        await self.release.wait()
        return await super().get(request)


async def fill_job_slots(client: Client, sd: str, url: str) -> list[str]:
    """MAX_RUNNING copies into new volumes of ``sd``, from ``url``."""
    return [await start_copy(client, {"url": url}, await new_volume(client, sd, MiB))
            for _ in range(jobs_mod.MAX_RUNNING)]


async def test_source_leaving_the_map_stops_the_copy(
    client: Client, domains: Any, aiohttp_server: Server
) -> None:
    sa, sb, a, b = domains
    size = 4 * MiB
    src, dst = await new_volume(client, sa, size), await new_volume(client, sb, size)
    await write_image(client, src, size, {0: os.urandom(size)})
    # Maintenance keeps reads: a copy from there goes on.
    assert (await put_pool(client, pool_map(2, {sa: (a, "Maintenance"),
                                                sb: (b, "Active")})))[0] == 200
    job = await wait(client, await start_copy(client, src, dst))
    assert job["state"] == "done", job
    # Out of the map, it stops, even while it waits for its turn.
    gated = GatedSource(os.urandom(MiB), jobs_mod.MAX_RUNNING)
    busy = await fill_job_slots(client, sb, await serve(aiohttp_server, gated.app()))
    await asyncio.wait_for(gated.full.wait(), 10)
    job_id = await start_copy(client, src, await new_volume(client, sb, size))
    assert (await (await client.get(f"/jobs/{job_id}")).json())["state"] == "pending"
    assert (await put_pool(client, pool_map(3, {sb: (b, "Active")})))[0] == 200
    gated.release.set()
    job = await wait(client, job_id)
    assert job["state"] == "failed", job
    assert job["error"] == (f"the pool map changed: Storage domain {sa} is not in the pool "
                            "map"), job
    for i in busy:
        assert (await wait(client, i))["state"] == "done"


# -- remote sources that are not what they claim


def garbage_source(**answers: Callable[[web.Request], web.Response]) -> web.Application:
    """An HTTP server answering the image API's routes with ``answers``
    (``extents``, ``checksum``, ``get``), a real source's answers otherwise."""
    data = os.urandom(MiB)

    async def extents(request: web.Request) -> web.Response:
        if "extents" in answers:
            return answers["extents"](request)
        return web.json_response([{"start": 0, "length": len(data), "zero": False}])

    async def checksum(request: web.Request) -> web.Response:
        if "checksum" in answers:
            return answers["checksum"](request)
        h = StreamingBlockHash(request.query["algorithm"], int(request.query["block_size"]))
        h.update(data)
        return web.json_response(h.finish())

    async def get(request: web.Request) -> web.Response:
        if "get" in answers:
            return answers["get"](request)
        first, last = request.headers["Range"][6:].split("-")
        return web.Response(status=206, body=data[int(first) : int(last) + 1])

    app = web.Application()
    app.router.add_get("/images/t/extents", extents)
    app.router.add_get("/images/t/checksum", checksum)
    app.router.add_get("/images/t", get)
    return app


def html(request: web.Request) -> web.Response:
    return web.Response(text="<html>It works!</html>", content_type="text/html")


def json_answer(value: Any) -> Callable[[web.Request], web.Response]:
    return lambda request: web.json_response(value)


@pytest.mark.parametrize("answers,error", [
    ({"extents": html}, "source answered /extents with something else than JSON"),
    ({"extents": lambda r: web.Response(text="{nope", content_type="application/json")},
     "source answered /extents with something else than JSON"),
    ({"extents": json_answer({"a": 1})}, "source answered /extents with a bad extent"),
    ({"extents": json_answer([{"start": "0", "length": MiB, "zero": False}])},
     "source answered /extents with a bad extent at offset 0"),
    ({"extents": json_answer([{"start": 0, "length": 4096, "zero": False},
                              {"start": 8192, "length": 4096, "zero": True}])},
     "source answered /extents with a bad extent at offset 4096"),
    ({"extents": json_answer([{"start": 0, "length": -MiB, "zero": False}])},
     "source answered /extents with a bad extent at offset 0"),
    ({"checksum": json_answer(["x"])}, "source answered /checksum without a checksum"),
    ({"checksum": html}, "source answered /checksum with something else than JSON"),
], ids=["html", "bad-json", "object", "string-start", "gap", "negative", "checksum-list",
        "checksum-html"])
async def test_garbage_source_fails_the_job_clearly(
    client: Client, domains: Any, aiohttp_server: Server, answers: Any, error: str
) -> None:
    _, sb, _, _ = domains
    dst = await new_volume(client, sb, MiB)
    url = await serve(aiohttp_server, garbage_source(**answers))
    job = await wait(client, await start_copy(client, {"url": url}, dst))
    assert job["state"] == "failed", job
    assert job["error"].startswith(error), job["error"]
    assert not await legal(client, dst)


# -- cancel and the end of a job


async def test_cancel_while_verifying(
    client: Client, domains: Any, aiohttp_server: Server
) -> None:
    _, sb, _, _ = domains
    release = asyncio.Event()
    asked = asyncio.Event()
    data = os.urandom(2 * MiB)

    class SlowChecksum(FaultySource):
        async def checksum(self, request: web.Request) -> web.Response:
            asked.set()
            await release.wait()
            return await super().checksum(request)

    dst = await new_volume(client, sb, len(data))
    url = await serve(aiohttp_server, SlowChecksum(data).app())
    job_id = await start_copy(client, {"url": url}, dst)
    await asyncio.wait_for(asked.wait(), 10)
    job = await (await client.get(f"/jobs/{job_id}")).json()
    for _ in range(200):
        if job["state"] == "verifying":
            break
        await asyncio.sleep(0.02)  # polling the API; the data is already all sent
        job = await (await client.get(f"/jobs/{job_id}")).json()
    assert job["state"] == "verifying", job
    job = await (await client.delete(f"/jobs/{job_id}")).json()
    release.set()
    assert (job["state"], job["error"]) == ("canceled", "canceled by request")
    assert not await legal(client, dst)
    # Deleting a finished job changes nothing.
    again = await (await client.delete(f"/jobs/{job_id}")).json()
    assert again["state"] == "canceled"


async def test_cancel_during_the_final_mark_comes_too_late(
    client: Client, domains: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy is verified and an I/O worker marks the volume complete: a
    cancel then cannot stop the worker, so it must not report "canceled"
    (and free the volume for another job) while the worker still writes."""
    sa, sb, _, _ = domains
    src, dst = await new_volume(client, sa, MiB), await new_volume(client, sb, MiB)
    await write_image(client, src, MiB, {0: os.urandom(MiB)})
    marking, release = threading.Event(), threading.Event()
    original = FileDomain.set_legal

    def slow_mark(self: FileDomain, img_uuid: str, vol_uuid: str, legal: bool) -> Any:
        if legal and vol_uuid == dst["vol_id"]:
            marking.set()
            release.wait(10)
        return original(self, img_uuid, vol_uuid, legal)

    monkeypatch.setattr(FileDomain, "set_legal", slow_mark)
    job_id = await start_copy(client, src, dst)
    assert await asyncio.to_thread(marking.wait, 10)
    cancel = asyncio.ensure_future(client.delete(f"/jobs/{job_id}"))
    await asyncio.sleep(0.2)
    assert not cancel.done()  # the cancel waits for the worker...
    release.set()
    job = await (await cancel).json()
    assert (job["state"], job["error"]) == ("done", None)  # ...which finished the job
    assert await legal(client, dst)
    assert await read_image(client, dst, MiB) == await read_image(client, src, MiB)


async def test_many_jobs_wait_their_turn(
    client: Client, domains: Any, aiohttp_server: Server
) -> None:
    _, sb, _, _ = domains
    data = os.urandom(MiB)
    gated = GatedSource(data, jobs_mod.MAX_RUNNING)
    url = await serve(aiohttp_server, gated.app())
    count = jobs_mod.MAX_RUNNING + 2
    dsts = [await new_volume(client, sb, len(data)) for _ in range(count)]
    ids = [await start_copy(client, {"url": url}, d) for d in dsts]
    await asyncio.wait_for(gated.full.wait(), 10)
    states = [(await (await client.get(f"/jobs/{i}")).json())["state"] for i in ids]
    assert sorted(states) == ["pending"] * 2 + ["running"] * jobs_mod.MAX_RUNNING, states
    assert gated.in_flight == jobs_mod.MAX_RUNNING
    # A queued job can be canceled before it ever runs; it never touched its volume.
    waiting = ids[states.index("pending")]
    job = await (await client.delete(f"/jobs/{waiting}")).json()
    assert job["state"] == "canceled" and job["bytes_done"] == 0
    assert await legal(client, dsts[ids.index(waiting)])
    gated.release.set()
    for i, d in zip(ids, dsts, strict=True):
        job = await wait(client, i)
        if i != waiting:
            assert job["state"] == "done", job
            assert await read_image(client, d, len(data)) == data
