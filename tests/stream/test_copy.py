"""Copy jobs: sparse-aware, verified copies into local volumes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from stream import copy as copy_mod
from stream.copy import LocalSource
from stream.copyverify import Frontier
from stream.io import IO
from stream.jobs import Job
from volume.errors import ChecksumMismatch
from volume.memory import MemoryVolume

from .conftest import Client
from .daemon import Daemon

MiB = 1 << 20


def new_id() -> str:
    return str(uuid.uuid4())


async def add_domain(client: Client, path: Path | list[str], kind: str = "file",
                     **extra: Any) -> str:
    sd = new_id()
    loc: Any = str(path) if kind == "file" else path
    resp = await client.post("/domains", json={"uuid": sd, "type": kind, "location": loc,
                                               **extra})
    assert resp.status == 201, await resp.text()
    return sd


async def set_pool(client: Client, domains: dict[str, tuple[str, Any]], version: int = 1) -> None:
    resp = await client.put("/pool", json={
        "pool_id": POOL_ID, "map_version": version, "master_domain": next(iter(domains)),
        "domains": {sd: {"type": kind, "location": loc, "status": "Active"}
                    for sd, (kind, loc) in domains.items()}})
    assert resp.status == 200, await resp.text()


POOL_ID = new_id()


async def new_volume(client: Client, sd: str, size: int, fmt: str = "raw") -> dict[str, str]:
    ref = {"sd_id": sd, "img_id": new_id(), "vol_id": new_id()}
    resp = await client.post(f"/domains/{sd}/volumes", json={
        "img_id": ref["img_id"], "vol_id": ref["vol_id"], "size": size, "format": fmt})
    assert resp.status == 201, await resp.text()
    return ref


async def write_image(client: Client, ref: dict[str, str], size: int,
                      chunks: dict[int, bytes]) -> None:
    ticket = new_id()
    resp = await client.put(f"/tickets/{ticket}", json={
        "uuid": ticket, "size": size, "ops": ["write"], "timeout": 60, **ref})
    assert resp.status == 200, await resp.text()
    for offset, data in chunks.items():
        resp = await client.put(f"/images/{ticket}", data=data, headers={
            "Content-Range": f"bytes {offset}-{offset + len(data) - 1}/*"})
        assert resp.status == 200
    await client.delete(f"/tickets/{ticket}")


async def read_image(client: Client, ref: dict[str, str], size: int) -> bytes:
    ticket = new_id()
    resp = await client.put(f"/tickets/{ticket}", json={
        "uuid": ticket, "size": size, "ops": ["read"], "timeout": 60, **ref})
    assert resp.status == 200, await resp.text()
    data = await (await client.get(f"/images/{ticket}")).read()
    await client.delete(f"/tickets/{ticket}")
    return data


async def legal(client: Client, ref: dict[str, str]) -> bool:
    resp = await client.get(
        f"/domains/{ref['sd_id']}/images/{ref['img_id']}/volumes/{ref['vol_id']}")
    return bool((await resp.json())["legal"])


async def wait(client: Client, job_id: str) -> dict[str, Any]:
    for _ in range(600):
        job: dict[str, Any] = await (await client.get(f"/jobs/{job_id}")).json()
        if job["state"] not in ("pending", "running", "verifying"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


async def start_copy(client: Client, source: Any, dest: dict[str, str],
                     job_id: str | None = None) -> str:
    body = {"source": source, "destination": dest, "job_id": job_id or new_id()}
    resp = await client.post("/jobs/copy", json=body)
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["id"])


@pytest.fixture
async def two_file_domains(client: Client, tmp_path: Path) -> tuple[str, str]:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    sa, sb = await add_domain(client, a), await add_domain(client, b)
    await set_pool(client, {sa: ("file", str(a)), sb: ("file", str(b))})
    return sa, sb


SIZE = 24 * MiB
DATA = {0: os.urandom(MiB), 5 * MiB + 4096: os.urandom(3 * MiB), SIZE - 8192: os.urandom(8192)}


def expected_image() -> bytes:
    img = bytearray(SIZE)
    for off, data in DATA.items():
        img[off : off + len(data)] = data
    return bytes(img)


async def test_local_copy_is_sparse_and_verified(
    client: Client, two_file_domains: tuple[str, str]
) -> None:
    sa, sb = two_file_domains
    src, dst = await new_volume(client, sa, SIZE), await new_volume(client, sb, SIZE)
    await write_image(client, src, SIZE, DATA)
    job = await wait(client, await start_copy(client, src, dst))
    assert job["state"] == "done", job
    # Only data moved: the holes were never read or sent.
    assert job["bytes_total"] == job["bytes_done"] == sum(map(len, DATA.values()))
    assert type(job["rate"]) is int and job["rate"] > 0
    r = job["result"]
    assert r["checksum"] == r["source_checksum"] == r["destination_checksum"]
    assert await read_image(client, dst, SIZE) == expected_image()
    assert await legal(client, dst)


async def test_copy_over_old_data_zeroes_the_holes(
    client: Client, two_file_domains: tuple[str, str]
) -> None:
    """A destination that held other data (a retry into it, a reused volume):
    the source's holes are punched there, not left holding the old bytes."""
    sa, sb = two_file_domains
    src, dst = await new_volume(client, sa, SIZE), await new_volume(client, sb, SIZE)
    await write_image(client, src, SIZE, DATA)
    await write_image(client, dst, SIZE, {0: os.urandom(SIZE)})
    path = (await (await client.get(f"/domains/{sb}/images/{dst['img_id']}/volumes/"
                                    f"{dst['vol_id']}")).json())["path"]
    assert os.stat(path).st_blocks * 512 >= SIZE  # fully allocated with old data
    job = await wait(client, await start_copy(client, src, dst))
    assert job["state"] == "done", job
    r = job["result"]
    assert r["checksum"] == r["source_checksum"] == r["destination_checksum"]
    assert await read_image(client, dst, SIZE) == expected_image()
    # The holes are holes again: about the source's data stays allocated.
    assert os.stat(path).st_blocks * 512 <= sum(map(len, DATA.values())) + 2 * MiB


async def test_copy_to_block_domain(
    client: Client, tmp_path: Path, loop_device: Any
) -> None:
    fdir = tmp_path / "f"
    fdir.mkdir()
    devs = [loop_device(64 * MiB, sector_size=4096)]
    sf, sblk = await add_domain(client, fdir), await add_domain(client, devs, "block")
    await set_pool(client, {sf: ("file", str(fdir)), sblk: ("block", devs)})
    src, dst = await new_volume(client, sf, SIZE), await new_volume(client, sblk, SIZE)
    await write_image(client, src, SIZE, DATA)
    job = await wait(client, await start_copy(client, src, dst))
    assert job["state"] == "done", job
    assert await read_image(client, dst, SIZE) == expected_image()


@pytest.mark.parametrize("src_fmt,dst_fmt", [("raw", "qcow2"), ("qcow2", "raw")])
async def test_format_change_goes_through_qemu_img(
    client: Client, two_file_domains: tuple[str, str], src_fmt: str, dst_fmt: str
) -> None:
    sa, sb = two_file_domains
    src = await new_volume(client, sa, SIZE, src_fmt)
    dst = await new_volume(client, sb, SIZE, dst_fmt)
    info = await (await client.get(
        f"/domains/{sa}/images/{src['img_id']}/volumes/{src['vol_id']}")).json()
    # Put guest data into the source with qemu-io (it knows qcow2).
    subprocess.run(["qemu-io", "-f", src_fmt, "-c", "write -P 0x5a 1M 2M",
                    "-c", f"write -P 0x11 {SIZE - 65536} 65536", info["path"]],
                   check=True, capture_output=True)
    job = await wait(client, await start_copy(client, src, dst))
    assert job["state"] == "done", job
    assert job["result"] == {"verified_with": "qemu-img compare"}
    dinfo = await (await client.get(
        f"/domains/{sb}/images/{dst['img_id']}/volumes/{dst['vol_id']}")).json()
    r = subprocess.run(["qemu-img", "compare", "-f", src_fmt, "-F", dst_fmt, info["path"],
                        dinfo["path"]])
    assert r.returncode == 0


async def test_qcow2_copied_as_is_on_one_host(
    client: Client, two_file_domains: tuple[str, str]
) -> None:
    """The source was hashed over its virtual size, but a qcow2 copied as it
    is sends its file's bytes: every such copy failed its verification."""
    sa, sb = two_file_domains
    src = await new_volume(client, sa, SIZE, "qcow2")
    dst = await new_volume(client, sb, SIZE, "qcow2")
    info = await (await client.get(
        f"/domains/{sa}/images/{src['img_id']}/volumes/{src['vol_id']}")).json()
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 2M", info["path"]],
                   check=True, capture_output=True)
    assert os.path.getsize(info["path"]) < SIZE  # the file is not the virtual size
    job = await wait(client, await start_copy(client, src, dst))
    assert job["state"] == "done", job
    assert job["result"]["source_checksum"]["checksum"] == job["result"]["checksum"]["checksum"]
    dinfo = await (await client.get(
        f"/domains/{sb}/images/{dst['img_id']}/volumes/{dst['vol_id']}")).json()
    r = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", info["path"],
                        dinfo["path"]])
    assert r.returncode == 0
    assert await legal(client, dst)


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "remote-data")
    yield d
    d.stop()


async def test_copy_from_another_host(
    client: Client, two_file_domains: tuple[str, str], remote: Daemon
) -> None:
    image = remote.images / "disk.raw"
    with open(image, "wb") as f:
        f.truncate(SIZE)
        for off, data in DATA.items():
            f.seek(off)
            f.write(data)
    url = remote.add_ticket(image, ops=["read"])
    _, sb = two_file_domains
    dst = await new_volume(client, sb, SIZE)
    job = await wait(client, await start_copy(client, {"url": url}, dst))
    assert job["state"] == "done", job
    assert job["bytes_done"] == sum(map(len, DATA.values()))
    assert await read_image(client, dst, SIZE) == expected_image()


class FaultySource:
    """A real HTTP server speaking the image API, with injected faults."""

    def __init__(self, data: bytes | bytearray, *, die_at: int | None = None,
                 wrong_checksum: bool = False, slow: bool = False,
                 pause_at: int | None = None) -> None:
        self.data, self.die_at, self.wrong, self.slow = data, die_at, wrong_checksum, slow
        self.pause_at = pause_at
        self.paused, self.resume = asyncio.Event(), asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/images/t/extents", self.extents)
        app.router.add_get("/images/t/checksum", self.checksum)
        app.router.add_get("/images/t", self.get)
        return app

    async def extents(self, request: web.Request) -> web.Response:
        return web.json_response([{"start": 0, "length": len(self.data), "zero": False,
                                   "hole": False}])

    async def checksum(self, request: web.Request) -> web.Response:
        from stream.wire.blkhash import StreamingBlockHash

        h = StreamingBlockHash(request.query["algorithm"], int(request.query["block_size"]))
        h.update(self.data if not self.wrong else self.data[::-1])
        return web.json_response(h.finish())

    async def get(self, request: web.Request) -> web.StreamResponse:
        first, last = request.headers["Range"][6:].split("-")
        start, end = int(first), int(last) + 1
        resp = web.StreamResponse(status=206)
        resp.content_length = end - start
        await resp.prepare(request)
        for pos in range(start, end, MiB):
            if self.die_at is not None and pos >= self.die_at:
                assert request.transport is not None
                request.transport.abort()  # the host goes away mid-body
                return resp
            if self.slow:
                await asyncio.sleep(0.2)
            if self.pause_at is not None and pos >= self.pause_at and not self.resume.is_set():
                self.paused.set()
                await self.resume.wait()
            await resp.write(self.data[pos : min(pos + MiB, end)])
        return resp


@pytest.fixture
async def faulty(aiohttp_server: Any) -> AsyncIterator[Any]:
    async def start(source: FaultySource) -> str:
        server = await aiohttp_server(source.app())
        return f"http://127.0.0.1:{server.port}/images/t"

    yield start


async def test_source_disappears_then_retry_succeeds(
    client: Client, two_file_domains: tuple[str, str], faulty: Any
) -> None:
    data = os.urandom(8 * MiB)
    _, sb = two_file_domains
    dst = await new_volume(client, sb, len(data))
    url = await faulty(FaultySource(data, die_at=3 * MiB))
    job_id = new_id()
    job = await wait(client, await start_copy(client, {"url": url}, dst, job_id))
    assert job["state"] == "failed"
    # Ours up to the colon; aiohttp's words about the short body after it.
    assert job["error"].startswith("source host failed at offset 0: "), job["error"]
    assert job["bytes_done"] < len(data)
    assert not await legal(client, dst)  # marked incomplete
    good = await faulty(FaultySource(data))
    job = await wait(client, await start_copy(client, {"url": good}, dst, job_id))
    assert job["state"] == "done", job
    assert await read_image(client, dst, len(data)) == data
    assert await legal(client, dst)


async def test_checksum_difference_fails_the_job(
    client: Client, two_file_domains: tuple[str, str], faulty: Any
) -> None:
    data = os.urandom(2 * MiB)
    _, sb = two_file_domains
    dst = await new_volume(client, sb, len(data))
    url = await faulty(FaultySource(data, wrong_checksum=True))
    job = await wait(client, await start_copy(client, {"url": url}, dst))
    assert job["state"] == "failed"
    assert "source's own checksum differs" in job["error"]


async def test_source_written_during_the_copy_fails_it(
    client: Client, two_file_domains: tuple[str, str], faulty: Any
) -> None:
    data = bytearray(os.urandom(16 * MiB))
    _, sb = two_file_domains
    dst = await new_volume(client, sb, len(data))
    source = FaultySource(data, pause_at=4 * MiB)  # before the source checksum is asked
    job_id = await start_copy(client, {"url": await faulty(source)}, dst)
    await asyncio.wait_for(source.paused.wait(), 10)
    await asyncio.sleep(0.2)  # a checksum asked too early would be done by now
    data[:8] = b"changed!"  # already sent, written and read back
    source.resume.set()
    job = await wait(client, job_id)
    assert job["state"] == "failed"
    assert "source's own checksum differs" in job["error"]
    assert not await legal(client, dst)


class Recording(MemoryVolume):
    """A destination that logs its I/O and can corrupt one byte on its way in."""

    def __init__(self, size: int, corrupt_at: int | None = None) -> None:
        super().__init__(size)
        self.corrupt_at = corrupt_at
        self.log: list[tuple[str, int]] = []

    def write(self, offset: int, buf: memoryview) -> None:
        self.log.append(("write", offset))
        at = self.corrupt_at
        if at is not None and offset <= at < offset + len(buf):
            bad = bytearray(buf)
            bad[at - offset] ^= 0xFF
            buf = memoryview(bad)
        super().write(offset, buf)

    def readinto(self, offset: int, buf: memoryview) -> int:
        self.log.append(("read", offset))
        return super().readinto(offset, buf)


async def local_copy(dst: Recording, data: bytes) -> Job:
    io = IO(workers=4, buffer_size=MiB, pool_buffers=8)
    job = Job(new_id(), "copy", {})
    try:
        source = LocalSource(io, MemoryVolume(data), len(data))
        await copy_mod.copy(io, job, source, dst, punch=True)
    finally:
        io.close()
    return job


async def test_read_back_runs_behind_the_writes() -> None:
    data = os.urandom(12 * MiB)
    dst = Recording(len(data))
    job = await local_copy(dst, data)
    assert dst.getvalue() == data
    r = job.result
    assert r["checksum"] == r["source_checksum"] == r["destination_checksum"]
    last_write = max(i for i, (op, _) in enumerate(dst.log) if op == "write")
    read_before = [off for op, off in dst.log[:last_write] if op == "read"]
    assert read_before and min(read_before) == 0  # verified while data still arrived


async def test_destination_difference_names_its_first_block() -> None:
    data = os.urandom(12 * MiB)
    dst = Recording(len(data), corrupt_at=9 * MiB + 5)
    with pytest.raises(ChecksumMismatch, match=f"first at offset {8 * MiB}$"):
        await local_copy(dst, data)


async def test_cancel(client: Client, two_file_domains: tuple[str, str], faulty: Any) -> None:
    data = os.urandom(16 * MiB)
    _, sb = two_file_domains
    dst = await new_volume(client, sb, len(data))
    url = await faulty(FaultySource(data, slow=True))
    job_id = await start_copy(client, {"url": url}, dst)
    for _ in range(200):  # the source sends 1 MiB per 0.2 s: 3 s for all of it
        running = await (await client.get(f"/jobs/{job_id}")).json()
        assert type(running["rate"]) is int and running["rate"] >= 0
        if running["bytes_done"]:
            break
        await asyncio.sleep(0.02)
    assert running["state"] == "running" and running["rate"] > 0, running
    job = await (await client.delete(f"/jobs/{job_id}")).json()
    assert job["state"] == "canceled"
    assert job["bytes_done"] < len(data)
    assert not await legal(client, dst)  # the destination is marked incomplete


async def test_qcow2_volume_of_a_running_copy_is_not_resized(
    client: Client, two_file_domains: tuple[str, str], faulty: Any, tmp_path: Path
) -> None:
    """A resize of a qcow2 destination was taken in the middle of its copy:
    qemu-img rewrote the header the copy writes too, and the job still
    ended "done", its checksums equal, with the volume's bytes no longer
    the source's (or its header overwritten again by the copy)."""
    _, sb = two_file_domains
    image = tmp_path / "src.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), str(SIZE)],
                   check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 6M", str(image)],
                   check=True, capture_output=True)
    data = image.read_bytes()
    dst = await new_volume(client, sb, SIZE, "qcow2")
    source = FaultySource(data, pause_at=4 * MiB)
    job_id = await start_copy(client, {"url": await faulty(source), "format": "qcow2"}, dst)
    await asyncio.wait_for(source.paused.wait(), 10)
    resp = await client.patch(
        f"/domains/{sb}/images/{dst['img_id']}/volumes/{dst['vol_id']}",
        json={"size": 2 * SIZE})
    source.resume.set()
    assert resp.status == 409, await resp.text()
    assert job_id in (await resp.json())["detail"]
    job = await wait(client, job_id)
    assert job["state"] == "done", job
    assert await read_image(client, dst, len(data)) == data


async def test_a_running_copy_keeps_its_destination_incomplete(
    client: Client, two_file_domains: tuple[str, str], faulty: Any
) -> None:
    """PATCH {"legal": true} of a copy's destination was taken while the
    copy ran: once the copy failed (its source went away), the volume,
    half written, stayed marked complete."""
    data = os.urandom(8 * MiB)
    _, sb = two_file_domains
    dst = await new_volume(client, sb, len(data))
    source = FaultySource(data, pause_at=4 * MiB, die_at=5 * MiB)
    job_id = await start_copy(client, {"url": await faulty(source)}, dst)
    await asyncio.wait_for(source.paused.wait(), 10)
    resp = await client.patch(
        f"/domains/{sb}/images/{dst['img_id']}/volumes/{dst['vol_id']}",
        json={"legal": True})
    source.resume.set()
    assert resp.status == 409, await resp.text()
    assert job_id in (await resp.json())["detail"]
    job = await wait(client, job_id)
    assert job["state"] == "failed", job
    assert not await legal(client, dst)


async def test_qcow2_copied_as_is_keeps_the_destinations_parent(
    client: Client, two_file_domains: tuple[str, str], faulty: Any, tmp_path: Path
) -> None:
    """A qcow2 copied as it is brings its header, which names the source's
    parent: into a volume with another parent (or none) the job ended
    "done", the destination naming a backing file that is not its parent
    (a guest reading another volume's data, or nothing where the parent's
    data was), and refused by every later check of its header (422)."""
    sa, sb = two_file_domains
    img = new_id()
    parent = {"sd_id": sa, "img_id": img, "vol_id": new_id()}
    child = {"sd_id": sa, "img_id": img, "vol_id": new_id()}
    for ref, fmt, extra in ((parent, "raw", {}), (child, "qcow2", {"parent": parent["vol_id"]})):
        resp = await client.post(f"/domains/{sa}/volumes", json={
            "img_id": img, "vol_id": ref["vol_id"], "size": MiB, "format": fmt, **extra})
        assert resp.status == 201, await resp.text()
    dst = await new_volume(client, sb, MiB, "qcow2")  # no parent
    resp = await client.post("/jobs/copy", json={"source": child, "destination": dst})
    assert resp.status == 400, await resp.text()
    assert "parent" in (await resp.json())["detail"]

    # From another host, whose image's header names a host file.
    image = tmp_path / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/passwd",
                    "-F", "raw", str(image), str(MiB)], check=True)
    url = await faulty(FaultySource(image.read_bytes()))
    job = await wait(client, await start_copy(client, {"url": url, "format": "qcow2"}, dst))
    assert job["state"] == "failed", job
    assert "backing file" in job["error"], job
    assert not await legal(client, dst)


async def test_destination_fills_up(client: Client, tiny_fs: Path, faulty: Any) -> None:
    sd = await add_domain(client, tiny_fs, ovf_stores=1, ovf_store_size=MiB)
    await set_pool(client, {sd: ("file", str(tiny_fs))})
    data = os.urandom(8 * MiB)
    dst = await new_volume(client, sd, len(data))  # sparse: fits until written
    job = await wait(client, await start_copy(client, {"url": await faulty(
        FaultySource(data))}, dst))
    assert job["state"] == "failed"
    assert job["error"] == "no space left on the storage"


async def test_bad_copy_requests(client: Client, two_file_domains: tuple[str, str]) -> None:
    sa, _ = two_file_domains
    dst = await new_volume(client, sa, MiB)
    for body, status in [
        ({"source": {"url": "ftp://x"}, "destination": dst}, 400),
        ({"source": {"url": "http://x/images/t", "format": "qcow2"}, "destination": dst}, 400),
        ({"source": {"sd_id": sa}, "destination": dst}, 400),
        ({"source": dst, "destination": {"sd_id": sa, "img_id": new_id(),
                                         "vol_id": new_id()}}, 404),
    ]:
        resp = await client.post("/jobs/copy", json=body)
        assert resp.status == status, (body, await resp.text())
    assert (await client.get(f"/jobs/{new_id()}")).status == 404


def test_frontier_waits_for_the_gap() -> None:
    """Writes in flight together may end in any order; the bytes count as
    final only up to the first one still running."""
    f = Frontier()
    assert f.ended(16, 24) == 0 and f.ended(8, 16) == 0
    assert f.ended(0, 8) == 24
    assert f.ended(32, 40) == 24  # a gap: 24-32 is still being written
    assert f.ended(24, 32) == 40
    assert f.ended(0, 40) == 40 and f.ended(40, 40) == 40
