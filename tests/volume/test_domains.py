"""The registry: domains by UUID, volumes by UUIDs, ticket paths."""

from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path

import pytest

from tests.conftest import LoopDeviceFactory
from volume.blockdomain import create_block_domain
from volume.domains import Domain, DomainRegistry, load_or_create_default, open_storage
from volume.errors import Forbidden, InvalidRequest, NotFound
from volume.filedomain import FileDomain, create_file_domain, open_file_domain

MiB = 1 << 20


def new_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def file_sd(tmp_path: Path) -> FileDomain:
    root = tmp_path / "sd"
    root.mkdir()
    return create_file_domain(str(root), new_id())


def test_volume_by_uuids_file(file_sd: FileDomain) -> None:
    made = file_sd.create_volume(new_id(), new_id(), MiB)
    reg = DomainRegistry()
    # Registered the way the daemon does from its config: opened on first use.
    reg.add(Domain(file_sd.uuid, "file", file_sd.location[0]))
    assert reg.volume(file_sd.uuid, made.img_uuid, made.vol_uuid) == made
    assert reg.storage(file_sd.uuid) is reg.storage(file_sd.uuid)


def test_volume_by_uuids_block(loop_device: LoopDeviceFactory) -> None:
    devices = [loop_device(8 * MiB), loop_device(8 * MiB)]
    sd = create_block_domain(devices, new_id())
    made = sd.create_volume(new_id(), new_id(), 7 * MiB)
    on_second = sd.create_volume(new_id(), new_id(), MiB)
    reg = DomainRegistry()
    reg.add(Domain(sd.uuid, "block", devices[0], tuple(devices)))
    assert reg.volume(sd.uuid, made.img_uuid, made.vol_uuid) == made
    found = reg.volume(sd.uuid, on_second.img_uuid, on_second.vol_uuid)
    assert (found.path, found.offset) == (devices[1], MiB)
    # A registered device is a valid ticket path too.
    domain, real = reg.resolve(devices[1])
    assert (domain.uuid, real) == (sd.uuid, os.path.realpath(devices[1]))


def test_attach(file_sd: FileDomain) -> None:
    reg = DomainRegistry()
    domain = reg.attach(file_sd)
    assert domain == Domain(file_sd.uuid, "file", file_sd.location[0])
    assert reg.get(file_sd.uuid) == domain
    assert reg.storage(file_sd.uuid) is file_sd


def test_attach_block(loop_device: LoopDeviceFactory) -> None:
    devices = [loop_device(4 * MiB), loop_device(4 * MiB)]
    sd = create_block_domain(devices, new_id())
    domain = DomainRegistry().attach(sd)
    assert domain == Domain(sd.uuid, "block", devices[0], tuple(devices))


def test_volume_unknown_domain() -> None:
    with pytest.raises(NotFound, match="No such storage domain"):
        DomainRegistry().volume(new_id(), new_id(), new_id())


def test_volume_unknown_volume(file_sd: FileDomain) -> None:
    reg = DomainRegistry()
    reg.attach(file_sd)
    with pytest.raises(NotFound, match="No such volume"):
        reg.volume(file_sd.uuid, new_id(), new_id())


@pytest.mark.parametrize("which", [0, 1, 2])
def test_volume_malformed_uuid(file_sd: FileDomain, which: int) -> None:
    reg = DomainRegistry()
    reg.attach(file_sd)
    ids = [file_sd.uuid, new_id(), new_id()]
    ids[which] = "12345"
    with pytest.raises(InvalidRequest, match="malformed UUID"):
        reg.volume(*ids)


def test_storage_location_missing(tmp_path: Path) -> None:
    reg = DomainRegistry()
    sd_uuid = new_id()
    reg.add(Domain(sd_uuid, "file", str(tmp_path / "gone")))
    with pytest.raises(InvalidRequest, match="does not exist"):
        reg.volume(sd_uuid, new_id(), new_id())


def test_storage_not_a_block_device(tmp_path: Path) -> None:
    f = tmp_path / "disk"
    f.write_bytes(bytes(MiB))
    with pytest.raises(InvalidRequest, match="is not a block device"):
        open_storage(Domain(new_id(), "block", str(f), (str(f),)))


def test_storage_wrong_uuid(file_sd: FileDomain) -> None:
    with pytest.raises(InvalidRequest, match="holds storage domain"):
        open_storage(Domain(new_id(), "file", file_sd.location[0]))


def test_storage_unknown_type(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="unknown type 'nfs'"):
        open_storage(Domain(new_id(), "nfs", str(tmp_path)))


def test_add_replaces_opened_storage(file_sd: FileDomain, tmp_path: Path) -> None:
    reg = DomainRegistry()
    reg.attach(file_sd)
    reg.add(Domain(file_sd.uuid, "file", str(tmp_path / "moved")))
    with pytest.raises(InvalidRequest, match="does not exist"):
        reg.storage(file_sd.uuid)


# Ticket paths


def test_resolve_inside_file_domain(file_sd: FileDomain) -> None:
    reg = DomainRegistry()
    reg.attach(file_sd)
    info = file_sd.create_volume(new_id(), new_id(), MiB)
    domain, real = reg.resolve(info.path)
    assert (domain.uuid, real) == (file_sd.uuid, os.path.realpath(info.path))


def test_resolve_outside(file_sd: FileDomain, tmp_path: Path) -> None:
    reg = DomainRegistry()
    reg.attach(file_sd)
    outside = tmp_path / "outside.raw"
    outside.write_bytes(b"")
    with pytest.raises(Forbidden):
        reg.resolve(str(outside))
    # A symlink from inside the domain to outside is judged by its target.
    link = Path(file_sd.location[0], "images", "link.raw")
    link.symlink_to(outside)
    with pytest.raises(Forbidden):
        reg.resolve(str(link))


def test_resolve_refuses_the_domains_metadata(file_sd: FileDomain) -> None:
    """A ticket is for an image: never the domain's own metadata, which a
    transfer could otherwise rewrite under the domain."""
    reg = DomainRegistry()
    reg.attach(file_sd)
    info = file_sd.create_volume(new_id(), new_id(), MiB)
    root = Path(file_sd.location[0])
    partial = Path(info.path).parent / ".tmp-abc.part"
    partial.write_bytes(b"")
    for path, why in ((info.path + ".meta", "is metadata"), (str(partial), "is metadata"),
                      (str(root / "domain.json"), "under its images/")):
        with pytest.raises(Forbidden, match=why):
            reg.resolve(path)
    assert reg.resolve(info.path)[1] == os.path.realpath(info.path)


def test_resolve_block_device_of_no_domain(file_sd: FileDomain,
                                           loop_device: LoopDeviceFactory) -> None:
    registered, stranger = loop_device(4 * MiB), loop_device(4 * MiB)
    reg = DomainRegistry()
    reg.attach(file_sd)
    block = create_block_domain([registered], new_id())
    reg.attach(block)
    assert reg.resolve(registered)[0].uuid == block.uuid
    # A node of the stranger made inside the file domain is no way in either.
    node = os.path.join(file_sd.location[0], "images", "node.raw")
    os.mknod(node, 0o600 | stat.S_IFBLK, os.stat(stranger).st_rdev)
    for path in (stranger, node):
        with pytest.raises(Forbidden, match=f"^Invalid ticket: {path} is not inside a "
                                            "registered storage domain$"):
            reg.resolve(path)


def test_resolve_missing(file_sd: FileDomain) -> None:
    reg = DomainRegistry()
    reg.attach(file_sd)
    with pytest.raises(InvalidRequest, match="does not exist"):
        reg.resolve(os.path.join(file_sd.location[0], "images", "nope"))


# The default domain


def test_default_domain_is_stable(tmp_path: Path) -> None:
    first = load_or_create_default(str(tmp_path))
    second = load_or_create_default(str(tmp_path))
    assert first == second
    assert first.type == "file"
    sd = open_file_domain(first.path, first.uuid)
    info = sd.create_volume(new_id(), new_id(), MiB)
    reg = DomainRegistry()
    reg.add(second)
    assert reg.volume(first.uuid, info.img_uuid, info.vol_uuid) == info


def test_default_domain_from_older_layout(tmp_path: Path) -> None:
    # What the first version wrote: the directory named by the UUID.
    sd_uuid = new_id()
    path = tmp_path / "domains" / sd_uuid
    (path / "images").mkdir(parents=True)
    (path / "domain.json").write_text(json.dumps(
        {"uuid": sd_uuid, "type": "file", "version": 1}))
    assert load_or_create_default(str(tmp_path)) == Domain(sd_uuid, "file", str(path))


@pytest.mark.parametrize("kind", ["file", "block"])
def test_legality_survives_reopen(
    kind: str, file_sd: FileDomain, loop_device: LoopDeviceFactory
) -> None:
    from volume.blockdomain import open_block_domain
    from volume.sd import StorageDomain

    sd: StorageDomain
    devices: list[str] = []
    if kind == "file":
        sd = file_sd
    else:
        devices = [loop_device(8 * MiB)]
        sd = create_block_domain(devices, new_id())

    def reopen() -> StorageDomain:
        if kind == "file":
            return open_file_domain(file_sd.location[0])
        return open_block_domain(devices)

    made = sd.create_volume(new_id(), new_id(), MiB)
    assert made.legal
    marked = sd.set_legal(made.img_uuid, made.vol_uuid, False)
    assert not marked.legal
    assert not reopen().lookup(made.img_uuid, made.vol_uuid).legal
    sd.set_legal(made.img_uuid, made.vol_uuid, True)
    assert reopen().lookup(made.img_uuid, made.vol_uuid).legal
