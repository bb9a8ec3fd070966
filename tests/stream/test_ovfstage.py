"""A domain with one OVF store: the staged archive kept until committed.

An update of the only store marks it updating before the new archive is
copied in; an I/O error there (a crash leaves the same) used to leave the
domain with no valid store until the engine pushed again.  The staged
archive is kept in the data directory until the store is committed, and
the next touch of the domain (by this daemon or one started afresh)
commits it.
"""

from __future__ import annotations

import asyncio
import errno
import glob
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import xxhash

from stream import ovfstage
from stream.app import RUNNER_KWARGS, make_app
from stream.config import Config
from stream.state import OVF_UPDATES
from tests.conftest import LoopDeviceFactory
from volume.errors import VolumeError
from volume.ovfrecord import RECORD_SIZE, record_offset
from volume.ovfstore import OvfStores
from volume.ovfupdate import Update

from .conftest import Client, MiB, open_put
from .test_copy import add_domain, set_pool
from .test_ovf import build_tar, push, served

Start = Callable[[], Awaitable[tuple[Client, str]]]


def _starter(aiohttp_client: Any, aiohttp_server: Any, cfg: Config) -> Start:
    """Starts a daemon on ``cfg`` (one OVF store); the client and the
    embedded domain's UUID."""
    cfg.ovf.stores = 1

    async def start() -> tuple[Client, str]:
        server = await aiohttp_server(make_app(cfg, trust_tcp=True), **RUNNER_KWARGS)
        client: Client = await aiohttp_client(server)
        (found,) = glob.glob(os.path.join(cfg.daemon.data_dir, "domains", "*", ""))
        return client, Path(found).name
    return start


async def store_info(client: Client, sd: str) -> dict[str, Any]:
    resp = await client.get(f"/domains/{sd}/ovf-store/info")
    assert resp.status == 200, await resp.text()
    (store,) = (await resp.json())["stores"]
    info: dict[str, Any] = store
    return info


def _fails(*args: Any) -> None:
    raise OSError(errno.EIO, "Input/output error")


async def torn_push(client: Client, sd: str) -> bytes:
    """A good push, then one whose copy into the store fails: its archive
    (returned) is left pending, the store marked updating."""
    old, _ = build_tar(sd)
    assert (await push(client, sd, old))[0] == 200
    new, _ = build_tar(sd, count=40)
    with mock.patch.object(ovfstage, "copy_into", _fails):
        assert (await push(client, sd, new))[0] >= 500
    return new


@pytest.mark.parametrize("record_lost", [False, True], ids=["marked", "record-lost"])
async def test_a_store_torn_by_an_error_is_restored_by_a_new_daemon(
        aiohttp_client: Any, aiohttp_server: Any, cfg: Config, record_lost: bool) -> None:
    """``record-lost``: the store's record itself torn as it was marked
    (it cannot be read back): the kept archive is still committed."""
    start = _starter(aiohttp_client, aiohttp_server, cfg)
    client, sd = await start()
    old, _ = build_tar(sd)
    assert (await push(client, sd, old))[0] == 200
    new, _ = build_tar(sd, count=40)
    copy_into = ovfstage.copy_into

    def torn(source: Any, target: Any, length: int, check: Any) -> None:
        copy_into(source, target, length // 2, check)  # half of it, then the storage fails
        raise OSError(errno.EIO, "Input/output error")

    with mock.patch.object(ovfstage, "copy_into", torn):
        status, body = await push(client, sd, new)
        assert status >= 500, body
        store = await store_info(client, sd)  # tries to restore it, and fails the same
        assert store["valid"] is False and store["record"]["updating"] is True, store
    assert os.path.exists(ovfstage.pending_path(cfg.data_path, sd))
    await client.close()
    if record_lost:
        path = cfg.data_path / "domains" / sd / "images" / store["img_uuid"] / store["vol_uuid"]
        with open(path, "r+b") as f:
            f.seek(record_offset(store["size"]))
            f.write(b"\xff" * RECORD_SIZE)

    client, _ = await start()  # as after a crash: only what is on disk
    generation, served_tar = await served(client, sd)
    assert served_tar == new, (served_tar == old, generation)
    assert generation > 1
    store = await store_info(client, sd)
    assert store["valid"] is True and store["record"]["generation"] == generation
    assert os.listdir(cfg.data_path / ovfstage.STAGING_DIR) == []


async def test_a_pending_archive_never_replaces_a_valid_store(
        aiohttp_client: Any, aiohttp_server: Any, cfg: Config) -> None:
    """An update that failed before it marked the store (here: beginning
    it fails) leaves the store valid: the archive it kept, never answered
    for, is dropped, not committed over it."""
    client, sd = await _starter(aiohttp_client, aiohttp_server, cfg)()
    old, _ = build_tar(sd)
    assert (await push(client, sd, old))[0] == 200
    new, _ = build_tar(sd, count=40)
    with mock.patch.object(OvfStores, "begin", side_effect=OSError(errno.EIO, "I/O error")):
        status, body = await push(client, sd, new)
    assert status >= 500, body
    assert os.path.exists(ovfstage.pending_path(cfg.data_path, sd))
    assert await served(client, sd) == (1, old)
    assert os.listdir(cfg.data_path / ovfstage.STAGING_DIR) == []


async def test_a_new_push_restores_the_pending_archive_first(
        aiohttp_client: Any, aiohttp_server: Any, cfg: Config) -> None:
    """A push that comes after a torn update, and turns out bad, still
    leaves the domain a valid store: the pending one, committed first."""
    client, sd = await _starter(aiohttp_client, aiohttp_server, cfg)()
    new = await torn_push(client, sd)
    status, body = await push(client, sd, new[:-2048])  # cut short: refused
    assert status == 422, body
    assert (await served(client, sd))[1] == new


def test_staging_leftovers_are_removed(tmp_path: Path) -> None:
    """What a crash leaves before an archive is kept (a named temporary
    file where O_TMPFILE is missing) is removed; a pending archive stays."""
    directory = tmp_path / ovfstage.STAGING_DIR
    directory.mkdir()
    (directory / ".sd.123.tmp").write_bytes(b"x")
    (directory / "tmpabc.tmp").write_bytes(b"x")
    (directory / "a-domain.pending").write_bytes(b"x")
    assert ovfstage.pending(tmp_path) == {"a-domain"}
    assert os.listdir(directory) == ["a-domain.pending"]


async def test_a_reader_does_not_wait_for_a_running_update(
        aiohttp_client: Any, aiohttp_server: Any, cfg: Config) -> None:
    """With an archive pending and an update of the domain receiving its
    body (slowly), a GET of the store answers at once from what the store
    holds: a restore is never waited for behind an update."""
    client, sd = await _starter(aiohttp_client, aiohttp_server, cfg)()
    new = await torn_push(client, sd)
    with mock.patch.object(ovfstage, "copy_into", _fails):
        _, writer = await open_put(client, f"/domains/{sd}/ovf-store", len(new),
                                   new[:len(new) // 2])
        try:
            app = client.app
            assert app is not None
            for _ in range(200):  # the update holds the domain, receiving
                if app[OVF_UPDATES].lock(sd).locked():
                    break
                await asyncio.sleep(0.01)
            resp = await asyncio.wait_for(client.get(f"/domains/{sd}/ovf-store"), 10)
            assert resp.status == 404, await resp.text()  # torn, not restored yet
        finally:
            writer.close()
    for _ in range(200):  # the daemon notices the cut and ends the update
        if not app[OVF_UPDATES].lock(sd).locked():
            break
        await asyncio.sleep(0.01)
    assert await served(client, sd) == (2, new)  # the torn update's number, again


async def test_a_torn_block_store_is_restored(
        client: Client, loop_device: LoopDeviceFactory) -> None:
    """The same on a block domain's only store (a region of a LUN)."""
    device = loop_device(16 * MiB, sector_size=4096)
    sd = await add_domain(client, [device], "block", ovf_stores=1, ovf_store_size=MiB)
    await set_pool(client, {sd: ("block", [device])})
    new = await torn_push(client, sd)
    assert (await served(client, sd))[1] == new
    assert (await store_info(client, sd))["valid"] is True


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_no_descriptor_is_left_open_when_a_volume_cannot_be_made(tmp_path: Path) -> None:
    staged = ovfstage.Staging(tmp_path, MiB)
    try:
        staged.keep("11111111-2222-3333-4444-555555555555", 0, "0" * 32, 1)
    finally:
        staged.close()
    before = _open_fds()
    with mock.patch("volume.file.fcntl.fcntl", _fails):
        with pytest.raises(VolumeError, match="Input/output error"):
            ovfstage.Staging(tmp_path, MiB)
        storage = mock.Mock(uuid="11111111-2222-3333-4444-555555555555")
        with pytest.raises(VolumeError, match="Input/output error"):
            ovfstage.restore(tmp_path, storage, lambda: None)
    assert _open_fds() == before


async def test_a_stale_pending_archive_never_replaces_a_newer_generation(
        aiohttp_client: Any, aiohttp_server: Any, cfg: Config, tmp_path: Path) -> None:
    """Two hosts on one domain with a single store.  Host 1 commits A and
    dies before it drops A's pending archive; host 2 commits B (answered
    200), then an update of host 2 is cut off in the store.  Host 1's next
    read must not commit A over the domain: A is older than B."""
    cfg.ovf.stores = 1
    cfg2 = Config()
    cfg2.daemon.data_dir = str(tmp_path / "data2")
    cfg2.ovf.store_size = cfg.ovf.store_size
    cfg2.ovf.stores = 1

    async def start(c: Config) -> Client:
        server = await aiohttp_server(make_app(c, trust_tcp=True), **RUNNER_KWARGS)
        client: Client = await aiohttp_client(server)
        return client

    host1, host2 = await start(cfg), await start(cfg2)
    shared = tmp_path / "shared"
    shared.mkdir()
    sd = await add_domain(host1, shared, ovf_stores=1, ovf_store_size=cfg.ovf.store_size)
    for host in (host1, host2):
        await set_pool(host, {sd: ("file", str(shared))})

    a, _ = build_tar(sd, count=3)
    with mock.patch.object(ovfstage, "drop", _fails):  # as if killed just before
        assert (await push(host1, sd, a))[0] == 200
    assert os.path.exists(ovfstage.pending_path(cfg.data_path, sd))

    b, _ = build_tar(sd, count=7)
    status, body = await push(host2, sd, b)
    assert status == 200, body
    c, _ = build_tar(sd, count=11)
    with mock.patch.object(ovfstage, "copy_into", _fails):  # host 2's next update torn
        assert (await push(host2, sd, c))[0] >= 500

    resp = await host1.get(f"/domains/{sd}/ovf-store")  # host 1 reads the domain
    await resp.read()
    generation, tar = await served(host2, sd)
    assert tar in (b, c) and generation > body["generation"], (generation, tar == a)


async def test_an_archive_kept_before_another_hosts_commit_is_still_restored(
        aiohttp_client: Any, aiohttp_server: Any, cfg: Config) -> None:
    """Another host commits B between this update's keep (generation 2)
    and its begin, which marks the store 3.  Cut off before the kept
    archive's record says 3 (here: its re-stamp fails; a kill leaves the
    same), the store is marked updating 3 and the kept archive says 2:
    it must still be restored, or the domain is left with no store."""
    client, sd = await _starter(aiohttp_client, aiohttp_server, cfg)()
    old, _ = build_tar(sd)
    assert (await push(client, sd, old))[0] == 200
    b, _ = build_tar(sd, count=7)
    new, _ = build_tar(sd, count=40)
    begin = OvfStores.begin
    other_host = [True]
    marked: list[bool] = []

    def begin_after_another_host(self: OvfStores, *args: Any, **kwargs: Any) -> Any:
        if other_host:
            other_host.clear()
            with begin(self) as update:  # the other host's whole update of B
                update.volume.write(0, memoryview(b))
                update.commit(len(b), xxhash.xxh3_128_hexdigest(b))
            marked.clear()
        return begin(self, *args, **kwargs)

    stamp, mark = ovfstage.Staging.stamp, Update._mark
    stamps: list[int] = []

    def marking(self: Update, *args: Any) -> None:
        mark(self, *args)
        marked.append(True)

    def stamp_unless_marked(self: ovfstage.Staging, *args: Any) -> None:
        stamps.append(args[0])
        if marked:  # this update marked the store: killed here
            raise OSError(errno.EIO, "Input/output error")
        stamp(self, *args)

    with mock.patch.object(OvfStores, "begin", begin_after_another_host), \
            mock.patch.object(Update, "_mark", marking), \
            mock.patch.object(ovfstage.Staging, "stamp", stamp_unless_marked), \
            mock.patch.object(ovfstage, "copy_into", _fails):  # or killed here
        status, body = await push(client, sd, new)
    assert status >= 500, body
    assert stamps == [2, 3]
    resp = await client.get(f"/domains/{sd}/ovf-store")
    assert resp.status == 200, await resp.text()
    assert await resp.read() == new
