"""A qcow2 volume's header is written by whoever holds its write ticket.
qemu-img followed what it named: a copy to raw read a host file through a
backing file into the new disk, a copy into qcow2 and a resize wrote a
host file named as an external data file.  Now the header is checked
before qemu-img opens the volume, and qemu-img is told there is no
backing file."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from .conftest import Client, MiB
from .test_copy import new_volume, start_copy, two_file_domains, wait, write_image

__all__ = ["two_file_domains"]  # a fixture these tests use

SECRET = b"engine-token-0123456789abcdef\n"


async def volume_info(client: Client, ref: dict[str, str]) -> dict[str, object]:
    resp = await client.get(
        f"/domains/{ref['sd_id']}/images/{ref['img_id']}/volumes/{ref['vol_id']}")
    assert resp.status == 200
    info: dict[str, object] = await resp.json()
    return info


def crafted(tmp_path: Path, *options: str) -> bytes:
    """A qcow2 image made by qemu-img with ``options``, as its bytes."""
    image = tmp_path / "crafted.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *options, str(image), "4M"],
                   check=True)
    data = image.read_bytes()
    image.unlink()
    return data


async def upload(client: Client, ref: dict[str, str], data: bytes) -> None:
    """The uploader's bytes, header included, through a write ticket."""
    await write_image(client, ref, len(data), {0: data})


async def test_a_backing_file_is_not_read_into_a_copy(
        client: Client, two_file_domains: tuple[str, str], tmp_path: Path) -> None:
    sa, sb = two_file_domains
    secret = tmp_path / "engine.token"
    secret.write_bytes(SECRET)
    src = await new_volume(client, sa, 4 * MiB, "qcow2")
    await upload(client, src, crafted(tmp_path, "-b", str(secret), "-F", "raw"))
    dst = await new_volume(client, sb, 4 * MiB, "raw")
    job = await wait(client, await start_copy(client, src, dst))
    assert job["state"] == "failed", job
    assert "is refused: it names a backing file" in job["error"]
    assert f"{secret}" in job["error"] and "but the volume has no parent" in job["error"]
    dinfo = await volume_info(client, dst)
    assert dinfo["legal"] is False
    assert SECRET not in Path(str(dinfo["path"])).read_bytes()


async def test_a_data_file_is_not_written_by_a_copy_or_a_resize(
        client: Client, two_file_domains: tuple[str, str], tmp_path: Path) -> None:
    sa, sb = two_file_domains
    victim = tmp_path / "victim"
    header = crafted(tmp_path, "-o", f"data_file={victim},data_file_raw=on")
    victim.write_bytes(b"host file\n")
    src = await new_volume(client, sa, 4 * MiB, "raw")
    await upload(client, src, b"guest data" * 1000)
    dst = await new_volume(client, sb, 4 * MiB, "qcow2")
    await upload(client, dst, header)
    job = await wait(client, await start_copy(client, src, dst))
    assert job["state"] == "failed", job
    assert "it keeps its data in an external data file" in job["error"]
    path = f"/domains/{sb}/images/{dst['img_id']}/volumes/{dst['vol_id']}"
    resp = await client.patch(path, json={"size": 64 * MiB})
    assert resp.status == 422, await resp.text()
    body = await resp.json()
    assert body["error"] == "unsafe-image" and "external data file" in body["detail"]
    assert victim.read_bytes() == b"host file\n"
    assert (await volume_info(client, dst))["size"] == 4 * MiB


async def test_a_qcow2_volume_is_not_resized_under_a_writer(
        client: Client, two_file_domains: tuple[str, str]) -> None:
    """qemu-img would open a header the ticket's holder may be rewriting."""
    sa, _ = two_file_domains
    ref = await new_volume(client, sa, 4 * MiB, "qcow2")
    ticket = "9a8b7c6d-0000-4000-8000-00000000abcd"
    resp = await client.put(f"/tickets/{ticket}", json={
        "uuid": ticket, "size": 4 * MiB, "ops": ["write"], "timeout": 60, **ref})
    assert resp.status == 200
    path = f"/domains/{sa}/images/{ref['img_id']}/volumes/{ref['vol_id']}"
    resp = await client.patch(path, json={"size": 8 * MiB})
    assert resp.status == 409
    assert f"transfer ticket {ticket} may write it" in (await resp.json())["detail"]
    await client.delete(f"/tickets/{ticket}")
    resp = await client.patch(path, json={"size": 8 * MiB})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["size"] == 8 * MiB


async def test_qcow2_volumes_have_the_mode_of_raw_ones(
        client: Client, two_file_domains: tuple[str, str]) -> None:
    """qemu-img created them 0666 less the umask: world-readable disks."""
    sa, _ = two_file_domains
    modes = set()
    for fmt in ("raw", "qcow2"):
        info = await volume_info(client, await new_volume(client, sa, MiB, fmt))
        modes.add(stat.S_IMODE(os.stat(str(info["path"])).st_mode))
    umask = os.umask(0o022)
    os.umask(umask)
    assert modes == {0o660 & ~umask}
