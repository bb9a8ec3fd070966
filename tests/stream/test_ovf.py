"""OVF stores through the daemon: the verified tar stream, served back."""

from __future__ import annotations

import asyncio
import errno
import io
import os
import re
import socket
import subprocess
import tarfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import xxhash
import zstandard
from aiohttp import web

from stream import ovfread, ovfstage
from stream.app import make_app
from stream.config import Config
from stream.state import OVF_UPDATES
from stream.wire import manifest
from stream.wire.manifest import java_date
from stream.wire.tarplan import Member, ovf_store_plan, render
from tests.conftest import LoopDeviceFactory
from tests.volume.ovfstore_util import make_storage, open_stores, plant
from volume import ovfupdate

from .conftest import Client
from .test_copy import add_domain, set_pool

MiB = 1 << 20


def ovf_xml(vm: str, n: int) -> bytes:
    return (f'<?xml version="1.0"?><ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/'
            f'envelope/1/"><Content ovf:id="{vm}"><Name>vm-{n}</Name></Content>'
            f"</ovf:Envelope>").encode() + b" " * (n % 700)


def add_info(t: tarfile.TarFile, sd: str) -> None:
    """A minimal ``info.json`` (no manifest) as a tar's first entry."""
    info = tarfile.TarInfo("info.json")
    data = b'{"Last Updated": "x", "Storage Domains": [{"uuid": "' + sd.encode() + b'"}]}'
    info.size = len(data)
    t.addfile(info, io.BytesIO(data))


def build_tar(
    sd: str, count: int = 5, *, with_manifest: bool = True
) -> tuple[bytes, dict[str, bytes]]:
    ovfs = {str(uuid.uuid4()): b"" for _ in range(count)}
    for n, vm in enumerate(ovfs):
        ovfs[vm] = ovf_xml(vm, n)
    entries = [(vm, len(d), xxhash.xxh3_128_hexdigest(d), d) for vm, d in ovfs.items()]
    plan, _, _, _ = ovf_store_plan(java_date(time.time()), sd, entries,
                                   {next(iter(ovfs)): 1}, int(time.time()))

    def fetch(member: Member, start: int, length: int) -> bytes:
        data: bytes = member.source[start : start + length]
        return data

    tar = b"".join(render(plan, fetch))
    if not with_manifest:  # what an unchanged oVirt engine sends: plain tar, no manifest
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
            info = (b'{"Last Updated": "Wed Jul 01 11:43:07 UTC 2020", '
                    b'"Storage Domains": [{"uuid": "' + sd.encode() + b'"}]}')
            for name, data in [("info.json", info),
                               *((f"{vm}.ovf", d) for vm, d in ovfs.items())]:
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
        tar = buf.getvalue()
    return tar, ovfs


async def push(client: Client, sd: str, body: Any, **headers: str) -> Any:
    resp = await client.put(f"/domains/{sd}/ovf-store", data=body, headers=headers)
    return resp.status, await resp.json()


async def cut_off_push(client: Client, sd: str, tar: bytes) -> None:
    """A PUT whose client leaves after sending half of ``tar``."""
    _, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"PUT /domains/{sd}/ovf-store HTTP/1.1\r\nHost: x\r\n"
                 f"Content-Length: {len(tar)}\r\n\r\n".encode() + tar[: len(tar) // 2])
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def served(client: Client, sd: str) -> tuple[int, bytes]:
    resp = await client.get(f"/domains/{sd}/ovf-store")
    assert resp.status == 200, await resp.text()
    return int(resp.headers["X-Ovf-Generation"]), await resp.read()


async def test_info_json_is_parsed_off_the_event_loop(client: Client, sd: str) -> None:
    """info.json (a 100,000-entry manifest is 16 MB, 0.3-0.8 s to parse)
    was parsed on the daemon's event loop, which every other transfer
    then waited for; it is parsed in a worker, the OVFs after it still on
    the loop."""
    threads: list[bool] = []

    def spy(data: bytes) -> Any:
        threads.append(threading.current_thread() is threading.main_thread())
        return manifest.parse_info(data)

    tar, _ = build_tar(sd, count=20)
    with mock.patch("stream.wire.tarread.parse_info", spy):
        status, body = await push(client, sd, tar)
    assert status == 200, body
    assert threads == [False]


async def test_round_trip_and_generations(client: Client, sd: str, tmp_path: Path) -> None:
    tar, ovfs = build_tar(sd)
    status, body = await push(client, sd, tar)
    assert status == 200, body
    assert body["generation"] == 1 and body["tar_length"] == len(tar)
    assert body["digest"] == xxhash.xxh3_128_hexdigest(tar)
    assert body["copies_pending"] == 1
    gen, data = await served(client, sd)
    assert (gen, data) == (1, tar)
    # Python's tarfile and GNU tar both read the stored archive.
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        names = t.getnames()
    assert names[0] == "info.json" and names[-1] == "metadata.json"
    (tmp_path / "store.tar").write_bytes(data)
    vm = next(iter(ovfs))
    out = subprocess.run(["tar", "-xOf", str(tmp_path / "store.tar"), f"{vm}.ovf"],
                         capture_output=True, check=True).stdout
    assert out == ovfs[vm]
    # One OVF straight from the newest store.
    resp = await client.get(f"/domains/{sd}/ovf-store/{vm}.ovf")
    assert resp.status == 200 and await resp.read() == ovfs[vm]
    assert (await client.get(f"/domains/{sd}/ovf-store/{uuid.uuid4()}.ovf")).status == 404
    # A second stream: generation 2, copied into every store.
    tar2, _ = build_tar(sd, count=7)
    status, body = await push(client, sd, tar2)
    assert status == 200 and body["generation"] == 2
    info = await (await client.get(f"/domains/{sd}/ovf-store/info")).json()
    assert [s["valid"] for s in info["stores"]] == [True, True]
    assert {s["record"]["generation"] for s in info["stores"]} == {2}
    assert info["copy_errors"] == []  # info waited for the copies after the answer
    for store in info["stores"]:  # counted from the archive read back
        assert (store["entries"], store["ovfs"]) == (9, 7), store
        assert store["record"]["tar_length"] == len(tar2) and store["size"] > len(tar2)
        assert abs(store["record"]["committed_at"] - time.time()) < 60
    assert await served(client, sd) == (2, tar2)


@pytest.mark.parametrize("mode", ["chunked", "zstd", "zstd-chunked", "no-manifest"])
async def test_encodings_and_plain_ovirt_tar(client: Client, sd: str, mode: str) -> None:
    tar, _ = build_tar(sd, with_manifest=mode != "no-manifest")
    body: Any = tar
    headers: dict[str, str] = {}
    if mode.startswith("zstd"):
        body = zstandard.ZstdCompressor().compress(tar)
        headers["Content-Encoding"] = "zstd"
    if mode.endswith("chunked"):
        data = body

        async def gen() -> Any:
            for i in range(0, len(data), 3000):
                yield data[i : i + 3000]

        body = gen()
    status, result = await push(client, sd, body, **headers)
    assert status == 200, result
    generation, data = await served(client, sd)
    # The store keeps the archive up to its end blocks; tarfile pads its
    # output with zeros to 10240 bytes, and those are not part of it.
    assert generation == 1 and data == tar[: len(data)] and not tar[len(data) :].strip(b"\0")


def evil_tar(kind: str, sd: str) -> bytes:
    good, _ = build_tar(sd, count=2)
    if kind == "truncated":
        return good[: len(good) - 700]
    if kind == "manifest-mismatch":
        i = good.index(b"<Name>vm-0")
        return good[:i] + b"<Name>vm-X" + good[i + 10 :]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        add_info(t, sd)
        ti = tarfile.TarInfo(f"{uuid.uuid4()}.ovf")
        if kind == "dotdot":
            ti.name = f"../{uuid.uuid4()}.ovf"
            ti.size = 3
            t.addfile(ti, io.BytesIO(b"abc"))
        elif kind == "symlink":
            ti.type, ti.linkname = tarfile.SYMTYPE, "/etc/passwd"
            t.addfile(ti)
        elif kind == "device":
            ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
            t.addfile(ti)
        elif kind == "bomb":
            for _ in range(5000):
                e = tarfile.TarInfo(f"{uuid.uuid4()}.ovf")
                t.addfile(e, io.BytesIO(b""))
    return buf.getvalue()


#: What each refusal says (a regex over the detail): the entry, where it
#: is in the stream, and what is wrong with it.
_UUID = "[0-9a-f-]{36}"


@pytest.mark.parametrize("kind,status,detail", [
    ("truncated", 422, r"^the stream ended at offset \d+, inside a header \(324 of 512 bytes\)$"),
    ("manifest-mismatch", 422, rf"^'{_UUID}\.ovf' \(data at offset 2048\): digest "
                               r"[0-9a-f]{32}, the manifest says [0-9a-f]{32}$"),
    ("dotdot", 422, rf"^entry '\.\./{_UUID}\.ovf' at offset 1024: path traversal \('\.\.'\)$"),
    ("symlink", 422, rf"^entry '{_UUID}\.ovf' at offset 1024: symbolic link entries are "
                     "not allowed, only regular files$"),
    ("device", 422, rf"^entry '{_UUID}\.ovf' at offset 1024: character device entries are "
                    "not allowed, only regular files$"),
    ("bomb", 422, rf"^entry '{_UUID}\.ovf' at offset 1024: empty entry$"),
], ids=["truncated", "manifest-mismatch", "dotdot", "symlink", "device", "bomb"])
async def test_bad_streams_are_refused_and_previous_kept(
    client: Client, sd: str, kind: str, status: int, detail: str
) -> None:
    good, _ = build_tar(sd)
    assert (await push(client, sd, good))[0] == 200
    code, body = await push(client, sd, evil_tar(kind, sd))
    assert code == status, body
    assert body["error"] == "invalid-ovf-tar"
    assert re.search(detail, body["detail"]), body["detail"]
    assert await served(client, sd) == (1, good)


async def test_oversized_stream(aiohttp_client: Any, aiohttp_server: Any, cfg: Config) -> None:
    cfg.ovf.store_size = 1 * MiB
    from stream.app import RUNNER_KWARGS

    app = make_app(cfg, trust_tcp=True)
    client = await aiohttp_client(await aiohttp_server(app, **RUNNER_KWARGS))
    sd = (await (await client.get("/pool")).json())["master_domain"]
    tar, _ = build_tar(sd, count=3)
    assert (await push(client, sd, tar))[0] == 200
    big = tarfile.TarInfo(f"{uuid.uuid4()}.ovf")
    big.size = 2 * MiB
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        t.addfile(big, io.BytesIO(os.urandom(big.size)))
    code, body = await push(client, sd, buf.getvalue())
    # 413, not the tar reader's 422: the reader sees the body a staging
    # buffer (ovf.buffer_size, 4 MiB) at a time, and the byte count passes
    # the 1 MiB store before the first buffer fills; the receive loop cuts
    # the body off there, before the entry's header is even looked at.
    assert (code, body) == (413, {
        "error": "ovf-store-too-small",
        "detail": f"the OVF tar is larger than the stores of domain {sd} (1044480 bytes)"})
    assert await served(client, sd) == (1, tar)
    # The same entry cut short, so the body stays within the store: now the
    # reader refuses it at its header, by the size the header declares (the
    # store's capacity is 1 MiB less its 4 KiB commit record).
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        add_info(t, sd)
        t.addfile(big, io.BytesIO(os.urandom(big.size)))
    code, body = await push(client, sd, buf.getvalue()[: 64 * 1024])
    assert (code, body) == (422, {
        "error": "invalid-ovf-tar",
        "detail": f"entry '{big.name}' at offset 1024: 2097152 bytes do not fit in the "
                  "store (1044480 bytes)"})
    assert await served(client, sd) == (1, tar)


async def test_a_body_longer_than_the_stores_is_refused_before_it_is_sent(
        client: Client, sd: str) -> None:
    good, _ = build_tar(sd)
    assert (await push(client, sd, good))[0] == 200
    before = await (await client.get(f"/domains/{sd}/ovf-store/info")).json()
    reader, writer = await asyncio.open_connection(client.host, client.port)
    # A terabyte announced, a few bytes sent: the answer comes without the rest.
    writer.write(f"PUT /domains/{sd}/ovf-store HTTP/1.1\r\nHost: x\r\n"
                 f"Content-Length: {1 << 40}\r\n\r\n".encode() + good[:512])
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert head.startswith(b"HTTP/1.1 413 "), head
    after = await (await client.get(f"/domains/{sd}/ovf-store/info")).json()
    assert after["stores"] == before["stores"]  # no store was begun
    assert await served(client, sd) == (1, good)


async def test_a_client_that_stops_reading_a_store_does_not_hold_off_updates(
        client: Client, sd: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GET of the newest store whose client reads nothing holds that store
    as read.  The next update commits the other store, and its copy into
    this one cuts the stalled reader off after the grace instead of waiting
    for it while holding the domain: the updates after it are not refused."""
    monkeypatch.setattr(ovfupdate, "READ_GRACE", 0.3)
    big, _ = build_tar(sd, count=4000)  # more than the socket buffers take
    assert (await push(client, sd, big))[0] == 200
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((str(client.host), int(str(client.port))))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(f"GET /domains/{sd}/ovf-store HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 ") and b"X-Ovf-Generation: 1" in head
        for generation in (2, 3):  # each one's copies go into the stalled store
            tar, _ = build_tar(sd)
            status, body = await asyncio.wait_for(push(client, sd, tar), 20)
            assert (status, body.get("generation")) == (200, generation), body
        info = await (await client.get(f"/domains/{sd}/ovf-store/info")).json()
        assert info["copy_errors"] == []
        assert [s["record"]["generation"] for s in info["stores"]] == [3, 3]
    finally:
        writer.close()
    assert (await served(client, sd))[0] == 3


@pytest.mark.parametrize("kind", ["file", "block"])
async def test_one_store_keeps_its_archive_through_bad_streams(
        client: Client, cfg: Config, tmp_path: Path, kind: str,
        loop_device: LoopDeviceFactory) -> None:
    """A domain with a single OVF store has no other copy: a body that is
    invalid, too large or cut off never reaches it (it is staged first),
    so the store still serves its archive after each; a good one replaces
    it, and no staging file is left behind."""
    where: Any = [loop_device(16 * MiB)] if kind == "block" else tmp_path / "sd"
    if kind == "file":
        where.mkdir()
    sd = await add_domain(client, where, kind, ovf_stores=1, ovf_store_size=MiB)
    await set_pool(client, {sd: (kind, where if kind == "block" else str(where))})
    good, _ = build_tar(sd)
    assert (await push(client, sd, good))[0] == 200

    def corrupt(tar: bytes) -> bytes:  # an OVF's bytes no longer what the manifest says
        at = tar.rindex(b"</ovf:Envelope>")
        return tar[:at] + b"X" + tar[at + 1:]
    tar, _ = build_tar(sd, count=40)
    status, body = await push(client, sd, corrupt(tar))
    assert status == 422 and body["error"] == "invalid-ovf-tar", body
    status, body = await push(client, sd, build_tar(sd, count=2000)[0])
    assert status == 413 and body["error"] == "ovf-store-too-small", body
    await cut_off_push(client, sd, tar)
    for _ in range(100):  # the daemon notices the cut and ends the update
        if not client.app[OVF_UPDATES].lock(sd).locked():
            break
        await asyncio.sleep(0.05)
    (store,) = (await (await client.get(f"/domains/{sd}/ovf-store/info")).json())["stores"]
    assert (store["valid"], store["record"]["generation"]) == (True, 1), store
    assert await served(client, sd) == (1, good)

    status, body = await push(client, sd, tar)
    assert (status, body["generation"], body["copies_pending"]) == (200, 2, 0), body
    assert await served(client, sd) == (2, tar)
    assert os.listdir(cfg.data_path / ovfstage.STAGING_DIR) == []


async def test_client_disconnect_mid_stream(client: Client, sd: str) -> None:
    good, _ = build_tar(sd)
    assert (await push(client, sd, good))[0] == 200
    tar2, _ = build_tar(sd, count=50)
    await cut_off_push(client, sd, tar2)
    for _ in range(100):  # the daemon notices the broken stream and aborts
        info = await (await client.get(f"/domains/{sd}/ovf-store/info")).json()
        if not any(s.get("record", {}) and s["record"].get("updating")
                   for s in info["stores"]):
            break
        await asyncio.sleep(0.05)
    assert await served(client, sd) == (1, good)


@pytest.mark.parametrize("err,status", [(errno.EIO, 500), (errno.ENOSPC, 507)])
async def test_storage_errors(client: Client, sd: str, err: int, status: int) -> None:
    good, _ = build_tar(sd)
    assert (await push(client, sd, good))[0] == 200
    await client.get(f"/domains/{sd}/ovf-store/info")  # its copies are done
    tar2, _ = build_tar(sd, count=9)
    real = os.pwrite

    def failing(fd: int, data: Any, offset: int) -> int:
        if len(data) > 4096:  # tar data, not the 4 KiB commit record
            raise OSError(err, os.strerror(err))
        return real(fd, data, offset)

    with mock.patch("os.pwrite", failing):
        code, body = await push(client, sd, tar2)
    assert code == status, body
    assert await served(client, sd) == (1, good)


async def test_copy_errors_are_reported(client: Client, sd: str) -> None:
    tar, _ = build_tar(sd)
    real = os.pwrite
    target: list[str] = []  # the first store written: the update's target

    def failing(fd: int, data: Any, offset: int) -> int:
        if offset + len(data) <= os.fstat(fd).st_size - 4096:  # not the commit record
            path = os.readlink(f"/proc/self/fd/{fd}")
            target[:] = target or [path]
            if path != target[0]:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd, data, offset)

    with mock.patch("os.pwrite", failing):
        code, body = await push(client, sd, tar)
        assert code == 200 and body["copies_pending"] == 1, body
        info = await (await client.get(f"/domains/{sd}/ovf-store/info")).json()
    assert len(info["copy_errors"]) == 1, info
    assert "Input/output error" in info["copy_errors"][0], info
    assert await served(client, sd) == (1, tar)


async def test_status_gates_ovf_writes(client: Client, sd: str, domain_dir: Path) -> None:
    loc = str(domain_dir.parent)
    pool = str(uuid.uuid4())
    for version, status, ok in [(1, "PreparingForMaintenance", True), (2, "Maintenance", False),
                                (3, "Detaching", True), (4, "Activating", False),
                                (5, "Locked", True), (6, "Inactive", False)]:
        resp = await client.put("/pool", json={
            "pool_id": pool, "map_version": version, "master_domain": sd,
            "domains": {sd: {"type": "file", "location": loc, "status": status}}})
        assert resp.status == 200
        code, body = await push(client, sd, build_tar(sd)[0])
        assert (code == 200) == ok, (status, body)
        if not ok:
            assert code == 409 and status in body["detail"]
    assert (await push(client, str(uuid.uuid4()), b"x"))[0] == 404


async def test_engine_credential_required(aiohttp_client: Any, cfg: Config) -> None:
    app: web.Application = make_app(cfg)
    c = await aiohttp_client(app)
    token = None
    resp = await c.get("/pool")
    assert resp.status == 401
    token = (Path(cfg.daemon.data_dir) / "engine.token").read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    sd = (await (await c.get("/pool", headers=auth)).json())["master_domain"]
    tar, _ = build_tar(sd)
    assert (await c.put(f"/domains/{sd}/ovf-store", data=tar)).status == 401
    assert (await c.get(f"/domains/{sd}/ovf-store/info")).status == 401
    resp = await c.put(f"/domains/{sd}/ovf-store", data=tar, headers=auth)
    assert resp.status == 200, await resp.text()


def test_info_counts_entries_of_valid_stores_only(tmp_path: Path) -> None:
    storage = make_storage("file", tmp_path)
    stores = open_stores(storage)
    try:
        good, bad = stores.stores
        tar, _ = build_tar(storage.uuid, count=3)
        plant(good, tar, 1)
        plant(bad, b"not a tar archive".ljust(2048, b"\0"), 2)  # its record verifies
    finally:
        stores.close()
    found = {s["vol_uuid"]: s for s in ovfread.states(storage)}
    assert (found[good.vol_uuid]["entries"], found[good.vol_uuid]["ovfs"]) == (5, 3)
    assert found[bad.vol_uuid]["valid"] and found[bad.vol_uuid]["entries"] is None
    assert "header at offset 0" in found[bad.vol_uuid]["entries_error"]


async def test_a_sender_requiring_a_manifest_gets_it_checked(client: Client, sd: str) -> None:
    """One damaged byte in info.json's "Manifest" key made the store read as
    an oVirt one without a manifest, and no OVF digest was checked.  A
    sender that sends X-Ovf-Manifest: required (Sluice's engine) is
    refused then; one that does not (an unchanged engine) is not."""
    good, _ = build_tar(sd)
    status, body = await push(client, sd, good, **{"X-Ovf-Manifest": "required"})
    assert status == 200, body
    at = good.index(b'"Manifest"')
    damaged = good[:at] + b'"Manifext"' + good[at + len(b'"Manifest"'):]
    status, body = await push(client, sd, damaged, **{"X-Ovf-Manifest": "required"})
    assert status == 422 and "no Manifest, and the sender requires one" in body["detail"]
    assert (await served(client, sd))[1] == good  # nothing committed
    plain, _ = build_tar(sd, with_manifest=False)
    status, body = await push(client, sd, plain)
    assert status == 200, body
