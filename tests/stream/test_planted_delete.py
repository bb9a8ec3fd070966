"""A volume whose data or metadata was replaced by a planted link is deleted
through the control API, and the link's target is left as it was.

The confined lookups refuse such a volume for every transfer, so before this
its DELETE was refused too, and an administrator had to remove the link by
hand.  Now the delete unlinks the name inside the domain, never following
it, and still refuses what it refuses for any volume (in use, a parent).
Real daemon, real files; the target is a host file outside every domain.
"""

from __future__ import annotations

import json
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


async def new_child(client: Client, base: dict[str, str]) -> dict[str, str]:
    """A qcow2 volume over ``base``, in its image."""
    top = {**base, "vol_id": str(uuid.uuid4())}
    resp = await client.post(f"/domains/{base['sd_id']}/volumes", json={
        "img_id": base["img_id"], "vol_id": top["vol_id"], "size": MiB,
        "format": "qcow2", "parent": base["vol_id"]})
    assert resp.status == 201, await resp.text()
    return top


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
    top = await new_child(client, base)
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


def rewrite_meta(path: Path, **fields: str) -> None:
    """Give the volume at ``path`` metadata with ``fields`` changed: a
    regular file with one link, as an edit in place (or a restore) leaves it."""
    meta = json.loads(meta_of(path).read_text())
    meta.update(fields)
    meta_of(path).write_text(json.dumps(meta))


async def test_metadata_with_another_volumes_ids_deletes_only_its_own_volume(
    client: Client, sd: str
) -> None:
    """The delete worked on the ids inside the metadata: A's holding B's
    ids deleted B (found by a review)."""
    a, b = await new_volume(client, sd, MiB), await new_volume(client, sd, MiB)
    a_path, b_path = await data_path(client, a), await data_path(client, b)
    rewrite_meta(a_path, img_uuid=b["img_id"], vol_uuid=b["vol_id"])
    await assert_deleted(client, a, a_path)
    assert (await client.get(volume_path(b))).status == 200
    assert b_path.exists() and meta_of(b_path).exists()


@pytest.mark.parametrize("where", ["dot-dot", "symlinked-dir"])
async def test_metadata_naming_a_place_outside_writes_nothing_there(
    client: Client, sd: str, tmp_path: Path, where: str
) -> None:
    """An image id of "../../..", or of a link to a host directory, in a
    volume's metadata made the delete write its "deleting" mark there, and
    before a2c4a93 remove a host file (found by a review)."""
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    (host_dir / "keep.txt").write_bytes(SECRET)
    ref = await new_volume(client, sd, MiB)
    path = await data_path(client, ref)
    images = path.parent.parent
    if where == "dot-dot":
        img = os.path.relpath(host_dir, path.parent)
    else:
        (images / "lnk").symlink_to(host_dir)
        img = "lnk"
    rewrite_meta(path, img_uuid=img)
    await assert_deleted(client, ref, path)
    assert sorted(p.name for p in host_dir.iterdir()) == ["keep.txt"]
    assert (host_dir / "keep.txt").read_bytes() == SECRET


async def test_a_parent_is_kept_while_a_child_cannot_be_read(
    client: Client, sd: str, tmp_path: Path
) -> None:
    """A child whose metadata got a second hard link (a hard-link backup of
    the export, say) cannot be read, so the child check skipped it and its
    parent was deleted under it (found by a review)."""
    base = await new_volume(client, sd, MiB, "qcow2")
    top = await new_child(client, base)
    base_path = await data_path(client, base)
    backup = tmp_path / "backup.meta"
    os.link(meta_of(base_path.with_name(top["vol_id"])), backup)
    resp = await client.delete(volume_path(base))
    assert resp.status == 409, await resp.text()
    assert "cannot be read" in (await resp.json())["detail"]
    assert (await client.get(volume_path(base))).status == 200
    backup.unlink()
    assert (await client.delete(volume_path(top))).status == 204
    await assert_deleted(client, base, base_path)


@pytest.mark.parametrize("stray", ["notes.meta", "bak", "directory"])
async def test_a_name_that_is_no_volume_blocks_no_delete(
    client: Client, sd: str, stray: str
) -> None:
    """The child check refused every delete in an image holding a stray
    ``.meta`` name that no delete can take away (found by a review)."""
    ref = await new_volume(client, sd, MiB)
    path = await data_path(client, ref)
    if stray == "notes.meta":
        (path.parent / "notes.meta").write_text("{}")
    elif stray == "bak":
        (path.parent / f"{uuid.uuid4()}.bak.meta").write_text("{}")
    else:
        (path.parent / f"{uuid.uuid4()}.meta").mkdir()
    resp = await client.delete(volume_path(ref))
    assert resp.status == 204, await resp.text()
    assert not path.exists() and not meta_of(path).exists()


async def test_a_parent_is_kept_under_a_child_that_spells_it_otherwise(
    client: Client, sd: str
) -> None:
    """A child's metadata naming its parent in capitals was read, but the
    child check compared spellings, and the parent went (found by a
    review).  Such metadata is now corrupt, so it keeps the parent."""
    base = await new_volume(client, sd, MiB, "qcow2")
    top = await new_child(client, base)
    base_path = await data_path(client, base)
    rewrite_meta(base_path.with_name(top["vol_id"]), parent=base["vol_id"].upper())
    resp = await client.delete(volume_path(base))
    assert resp.status == 409, await resp.text()
    assert (await client.get(volume_path(base))).status == 200
