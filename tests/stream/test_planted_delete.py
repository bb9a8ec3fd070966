"""A volume whose data or metadata was replaced by a planted link is deleted
through the control API, and the link's target is left as it was.

The confined lookups refuse such a volume for every transfer, so before this
its DELETE was refused too, and an administrator had to remove the link by
hand.  Now the delete unlinks the name inside the domain, never following
it, and still refuses what it refuses for any volume (in use, a parent).
Real daemon, real files; the target is a host file outside every domain.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import pytest

from tests.volume.test_confined import SECRET, outside

from .conftest import Client, MiB
from .test_confined import data_path, put_ticket, swap
from .test_copy import new_volume
from .test_volume_in_use import volume_path

__all__ = ["outside"]  # a fixture: a host file outside every domain


async def listed(client: Client, sd: str) -> set[str]:
    resp = await client.get(f"/domains/{sd}/volumes")
    assert resp.status == 200, await resp.text()
    return {v["vol_uuid"] for v in (await resp.json())["volumes"]}


async def assert_deleted(client: Client, ref: dict[str, str], path: Path) -> None:
    """DELETE answers 204, and nothing of the volume is left in the domain."""
    resp = await client.delete(volume_path(ref))
    assert resp.status == 204, await resp.text()
    assert (await client.get(volume_path(ref))).status == 404
    assert ref["vol_id"] not in await listed(client, ref["sd_id"])
    assert not path.parent.exists()  # its image's directory went too


def meta_of(path: Path) -> Path:
    return path.with_name(path.name + ".meta")


@pytest.mark.parametrize("name", ["meta", "data"])
async def test_a_volume_with_a_symlink_planted_is_deleted(
    client: Client, sd: str, outside: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    ref = await new_volume(client, sd, MiB)
    path = await data_path(client, ref)
    planted = meta_of(path) if name == "meta" else path
    swap(planted, outside)
    # Listed from its metadata: but for a link there, as before the delete.
    assert (ref["vol_id"] in await listed(client, sd)) == (name == "data")
    caplog.set_level(logging.WARNING, logger="volume.filedomain")
    await assert_deleted(client, ref, path)
    assert outside.read_bytes() == SECRET
    assert [r.getMessage() for r in caplog.records if "planted" in r.getMessage()] == [
        f"removed a symbolic link to {str(outside)!r} planted in place of "
        f"{'volume metadata' if name == 'meta' else 'volume'} "
        f"{os.path.relpath(planted, path.parents[2])} of storage domain {sd}; what it "
        "led to is left as it was"]


@pytest.mark.parametrize("name", ["meta", "data"])
async def test_a_hard_link_planted_loses_only_the_domains_name(
    client: Client, sd: str, outside: Path, name: str
) -> None:
    """The other name keeps the file, its content and its one remaining link."""
    ref = await new_volume(client, sd, MiB)
    path = await data_path(client, ref)
    planted = meta_of(path) if name == "meta" else path
    planted.unlink()
    os.link(outside, planted)
    await assert_deleted(client, ref, path)
    assert outside.read_bytes() == SECRET
    assert os.stat(outside).st_nlink == 1


@pytest.mark.parametrize("by", ["ids", "url"])
async def test_a_ticket_still_keeps_a_volume_with_a_planted_link(
    client: Client, sd: str, outside: Path, by: str
) -> None:
    """A ticket added before the link was planted: found by the volume's
    ids, or by the path it was added by, not by the link's target."""
    ref = await new_volume(client, sd, MiB)
    path = await data_path(client, ref)
    status, ticket = await put_ticket(
        client, **(ref if by == "ids" else {"url": f"file://{path}"}))
    assert status == 200, ticket
    swap(path, outside)
    resp = await client.delete(volume_path(ref))
    assert resp.status == 409, await resp.text()
    assert f"is in use by transfer ticket {ticket}" in (await resp.json())["detail"]
    assert os.path.islink(path)
    assert (await client.delete(f"/tickets/{ticket}")).status == 204
    await assert_deleted(client, ref, path)
    assert outside.read_bytes() == SECRET


async def test_a_parent_with_planted_metadata_is_not_deleted_under_its_child(
    client: Client, sd: str, outside: Path
) -> None:
    base = await new_volume(client, sd, MiB, "qcow2")
    top = {**base, "vol_id": str(uuid.uuid4())}
    resp = await client.post(f"/domains/{sd}/volumes", json={
        "img_id": base["img_id"], "vol_id": top["vol_id"], "size": MiB,
        "format": "qcow2", "parent": base["vol_id"]})
    assert resp.status == 201, await resp.text()
    path = await data_path(client, base)
    swap(meta_of(path), outside)
    resp = await client.delete(volume_path(base))
    assert resp.status == 409, await resp.text()
    assert (await resp.json())["detail"] == (
        f"Volume {base['img_id']}/{base['vol_id']} is the parent of {top['vol_id']}")
    assert os.path.islink(meta_of(path)) and path.exists()
    assert (await client.delete(volume_path(top))).status == 204
    await assert_deleted(client, base, path)
    assert outside.read_bytes() == SECRET
