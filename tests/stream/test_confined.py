"""Tickets, copy jobs and OVF stores never follow a link out of a file domain.

Others may write a file domain's directory (an NFS export): a symlink or a
hard link planted there, before a ticket is added or between its add and its
first request, must give no access to a host file or device.  Real daemon,
real files, a loop device for the device case.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LoopDeviceFactory
from tests.volume.test_confined import SECRET, outside
from volume.base import Volume
from volume.sd import VolumeInfo, open_data

from .conftest import AddTicket, Client, MiB
from .test_copy import new_volume, read_image, start_copy, wait, write_image
from .test_ovf import build_tar, push, served

__all__ = ["outside"]  # a fixture: a host file outside every domain ("/etc/shadow")


async def data_path(client: Client, ref: dict[str, str]) -> Path:
    resp = await client.get(
        f"/domains/{ref['sd_id']}/images/{ref['img_id']}/volumes/{ref['vol_id']}")
    assert resp.status == 200, await resp.text()
    return Path((await resp.json())["path"])


def swap(path: Path, target: Path | str) -> None:
    """Replace the file at ``path`` by a symlink to ``target``."""
    path.unlink()
    path.symlink_to(target)


async def put_ticket(client: Client, **fields: Any) -> tuple[int, str]:
    t = {"uuid": str(uuid.uuid4()), "size": MiB, "ops": ["read", "write"], "timeout": 60,
         **fields}
    resp = await client.put(f"/tickets/{t['uuid']}", json=t)
    return resp.status, t["uuid"] if resp.status == 200 else await resp.text()


async def assert_refused(client: Client, ticket: str, what: str) -> None:
    """Neither a read nor a write of the ticket gets through."""
    for method, data in (("GET", None), ("PUT", b"root::0:0:99999:7:::\n")):
        resp = await client.request(method, f"/images/{ticket}", data=data)
        body = await resp.text()
        assert resp.status == 403, (method, body)
        assert body.startswith(f"volume {what} of a file storage domain is "), body


async def test_volume_data_symlinked_out_is_refused_by_ids(
    client: Client, sd: str, outside: Path
) -> None:
    ref = await new_volume(client, sd, MiB)
    path = await data_path(client, ref)
    swap(path, outside)
    status, text = await put_ticket(client, **ref)
    assert status == 403, text
    assert text == (f"volume images/{ref['img_id']}/{ref['vol_id']} of a file storage "
                    "domain is a symbolic link, not a regular file: refused, so that it "
                    "cannot lead out of the domain\n")
    assert outside.read_bytes() == SECRET


async def ticketed(client: Client, sd: str, by: str) -> tuple[dict[str, str], Path, str]:
    """A new volume, its data's path, and a ticket naming it ``by`` ids or url."""
    ref = await new_volume(client, sd, MiB)
    path = await data_path(client, ref)
    where: dict[str, str] = dict(ref) if by == "ids" else {"url": f"file://{path}"}
    status, ticket = await put_ticket(client, **where)
    assert status == 200, ticket
    return ref, path, ticket


@pytest.mark.parametrize("by", ["ids", "url"])
async def test_symlink_swapped_in_after_the_ticket_is_refused(
    client: Client, sd: str, outside: Path, by: str
) -> None:
    """The audit's race: checked at add, swapped, then opened on the first request."""
    ref, path, ticket = await ticketed(client, sd, by)
    swap(path, outside)
    await assert_refused(client, ticket, f"images/{ref['img_id']}/{ref['vol_id']}")
    assert outside.read_bytes() == SECRET


async def test_image_directory_swapped_for_a_symlink_is_refused(
    client: Client, sd: str, tmp_path: Path
) -> None:
    """A symlink higher up (the image's directory) leads out just as well."""
    ref = await new_volume(client, sd, MiB)
    path = await data_path(client, ref)
    status, ticket = await put_ticket(client, url=f"file://{path}")
    assert status == 200, ticket
    elsewhere = tmp_path / "elsewhere"
    os.rename(path.parent, elsewhere)  # the same names, outside the domain
    path.parent.symlink_to(elsewhere)
    (elsewhere / ref["vol_id"]).write_bytes(SECRET)
    await assert_refused(client, ticket, f"images/{ref['img_id']}/{ref['vol_id']}")
    assert (elsewhere / ref["vol_id"]).read_bytes() == SECRET


@pytest.mark.parametrize("by", ["ids", "url"])
async def test_symlink_to_a_device_is_refused(
    client: Client, sd: str, loop_device: LoopDeviceFactory, by: str
) -> None:
    """Once a read-write BlockVolume on whatever device the link named."""
    device = loop_device(MiB)
    with open(device, "r+b") as f:
        f.write(SECRET)
    ref, path, ticket = await ticketed(client, sd, by)
    swap(path, device)
    await assert_refused(client, ticket, f"images/{ref['img_id']}/{ref['vol_id']}")
    with open(device, "rb") as f:
        assert f.read(len(SECRET)) == SECRET


async def test_hard_link_to_a_file_outside_is_refused(
    client: Client, image: Callable[..., Path], outside: Path
) -> None:
    """realpath cannot see a hard link; its link count can."""
    path = image(0)
    path.unlink()
    os.link(outside, path)
    status, text = await put_ticket(client, url=f"file://{path}")
    assert status == 403, text
    assert text == (f"image images/{path.name} of a file storage domain has 2 hard links, "
                    "and may have only one: refused\n")


async def test_hard_link_after_the_ticket_is_refused(
    client: Client, image: Callable[..., Path], add_ticket: AddTicket, outside: Path
) -> None:
    path = image(MiB)
    ticket = await add_ticket(path)
    path.unlink()
    os.link(outside, path)
    for method in ("GET", "PUT"):
        resp = await client.request(method, f"/images/{ticket}", data=b"x")
        assert resp.status == 403
        assert "has 2 hard links" in await resp.text()
    assert outside.read_bytes() == SECRET


@pytest.mark.parametrize("side", ["source", "destination"])
async def test_copy_job_refuses_a_symlinked_volume(
    client: Client, sd: str, outside: Path, side: str
) -> None:
    src, dst = await new_volume(client, sd, MiB), await new_volume(client, sd, MiB)
    swap(await data_path(client, src if side == "source" else dst), outside)
    resp = await client.post("/jobs/copy", json={"source": src, "destination": dst})
    assert resp.status == 403, await resp.text()
    assert "is a symbolic link" in (await resp.json())["detail"]
    assert outside.read_bytes() == SECRET


async def test_copy_job_refuses_a_volume_swapped_after_it_started(
    client: Client, sd: str, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's volumes are looked up at POST and opened when it runs."""
    with open(outside, "r+b") as f:
        f.truncate(MiB)  # big enough to take the copy
    src, dst = await new_volume(client, sd, MiB), await new_volume(client, sd, MiB)
    await write_image(client, src, MiB, {0: b"guest data"})
    dst_path = await data_path(client, dst)

    def swap_then_open(info: VolumeInfo, readonly: bool = False) -> Volume:
        if not readonly:
            swap(dst_path, outside)
        return open_data(info, readonly)

    monkeypatch.setattr("stream.handlers.jobs.open_data", swap_then_open)
    done = await wait(client, await start_copy(client, src, dst))
    assert done["state"] == "failed", done
    assert "is a symbolic link" in done["error"], done
    assert outside.read_bytes() == SECRET.ljust(MiB, b"\0")


async def test_a_format_change_refuses_a_volume_swapped_after_it_started(
    client: Client, sd: str, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """qemu-img opened the destination by name: swapped for a link when
    the job ran, it wrote the guest's data into the host file."""
    from stream import convert

    with open(outside, "r+b") as f:
        f.truncate(MiB)  # big enough to take the copy
    src, dst = await new_volume(client, sd, MiB, "qcow2"), await new_volume(client, sd, MiB)
    dst_path = await data_path(client, dst)
    real = convert.open_checked

    def swap_then_open(*args: VolumeInfo) -> list[int | None]:
        swap(dst_path, outside)
        return real(*args)

    monkeypatch.setattr(convert, "open_checked", swap_then_open)
    done = await wait(client, await start_copy(client, src, dst))
    assert done["state"] == "failed", done
    assert "is a symbolic link" in done["error"], done
    assert outside.read_bytes() == SECRET.ljust(MiB, b"\0")


async def test_ovf_store_symlinked_out_is_neither_read_nor_written(
    client: Client, sd: str, outside: Path
) -> None:
    tar, _ = build_tar(sd)
    assert (await push(client, sd, tar))[0] == 200
    resp = await client.get(f"/domains/{sd}/volumes")
    stores = [v for v in (await resp.json())["volumes"] if v["content"] == "OVF_STORE"]
    assert len(stores) == 2
    planted = Path(stores[0]["path"])
    with open(outside, "r+b") as f:
        f.write(planted.read_bytes())  # a valid store, so an update would write it
    swap(planted, outside)
    before = outside.read_bytes()
    info = await (await client.get(f"/domains/{sd}/ovf-store/info")).json()
    states = {s["vol_uuid"]: s for s in info["stores"]}
    assert states[stores[0]["vol_uuid"]]["valid"] is False
    assert "is a symbolic link" in states[stores[0]["vol_uuid"]]["error"]
    assert states[stores[1]["vol_uuid"]]["valid"] is True
    assert await served(client, sd) == (1, tar)  # from the other store
    # The next update's first target is the oldest store: the refused one.
    # It is passed over, as a store that cannot be opened at all, and the
    # other is the last valid one: the update is refused (503, naming the
    # link), and the host file is not written.
    status, body = await push(client, sd, build_tar(sd, count=3)[0])
    assert status == 503, body
    assert "is a symbolic link" in body["detail"]
    assert outside.read_bytes() == before
    assert await served(client, sd) == (1, tar)


async def test_regular_volume_still_works(client: Client, sd: str) -> None:
    """The checked open changes nothing for an ordinary volume."""
    ref = await new_volume(client, sd, MiB)
    status, ticket = await put_ticket(client, **ref)
    assert status == 200, ticket
    resp = await client.put(f"/images/{ticket}", data=b"hello")
    assert resp.status == 200, await resp.text()
    assert (await read_image(client, ref, MiB))[:5] == b"hello"


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
async def test_a_volume_is_never_made_through_a_planted_link(
    client: Client, sd: str, domain_dir: Path, outside: Path, fmt: str
) -> None:
    """A link planted again and again at the new volume's name: qemu-img
    create opened it by name (O_CREAT, no O_EXCL) and turned the host file
    into a qcow2 image (3 of 3 tries in a review).  Now the create fails
    or makes a real file; the host file is never touched."""
    img, vol = str(uuid.uuid4()), str(uuid.uuid4())
    (domain_dir / img).mkdir()
    data = domain_dir / img / vol
    stop = threading.Event()

    def plant() -> None:
        while not stop.is_set():
            with contextlib.suppress(FileExistsError, FileNotFoundError):
                os.symlink(outside, data)

    racer = threading.Thread(target=plant)
    racer.start()
    try:
        resp = await client.post(f"/domains/{sd}/volumes", json={
            "img_id": img, "vol_id": vol, "size": MiB, "format": fmt})
    finally:
        stop.set()
        racer.join()
    assert resp.status in (201, 409), await resp.text()  # 409: the link is in the way
    assert outside.read_bytes() == SECRET


async def test_an_overlay_does_not_open_its_parents_header(
    client: Client, sd: str, tmp_path: Path
) -> None:
    """qemu-img create -b opened the parent and what its uploaded header
    named (here an NBD server: the create connected to it, and hung while
    it said nothing, with the domain's lock held)."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    try:
        base = await new_volume(client, sd, MiB, "qcow2")
        crafted = tmp_path / "crafted.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b",
                        f"nbd://127.0.0.1:{listener.getsockname()[1]}/x", "-F", "raw",
                        str(crafted), "1M"], check=True)
        data = crafted.read_bytes()
        await write_image(client, base, len(data), {0: data})
        resp = await client.post(f"/domains/{sd}/volumes", json={
            "img_id": base["img_id"], "vol_id": str(uuid.uuid4()), "size": MiB,
            "format": "qcow2", "parent": base["vol_id"]})
        assert resp.status == 201, await resp.text()
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    finally:
        listener.close()
