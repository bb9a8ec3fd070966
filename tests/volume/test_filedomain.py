"""File domains on real directories, with real ``qemu-img``."""

from __future__ import annotations

import errno
import json
import os
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from volume import qemuimg
from volume.errors import Conflict, Forbidden, InvalidRequest, NoSpace, NotFound, VolumeError
from volume.filedomain import FileDomain, create_file_domain, open_file_domain
from volume.qcow2 import UnsafeImage
from volume.sd import Allocation, Content, Format, VolumeInfo, open_data

MiB = 1 << 20
GiB = 1 << 30


def new_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def sd(tmp_path: Path) -> FileDomain:
    root = tmp_path / "sd"
    root.mkdir()
    return create_file_domain(str(root), new_id())


KINDS = [
    pytest.param(Format.RAW, Allocation.SPARSE, id="raw-sparse"),
    pytest.param(Format.RAW, Allocation.PREALLOCATED, id="raw-preallocated"),
    pytest.param(Format.QCOW2, Allocation.SPARSE, id="qcow2-sparse"),
    pytest.param(Format.QCOW2, Allocation.PREALLOCATED, id="qcow2-preallocated"),
]


def info_of(path: str, fmt: str) -> dict[str, Any]:
    return qemuimg.info(path, fmt)


# Creating and attaching domains


def test_create_then_open(sd: FileDomain) -> None:
    again = open_file_domain(sd.location[0], sd.uuid)
    assert again.uuid == sd.uuid
    assert again.type == "file"
    assert json.loads(Path(sd.location[0], "domain.json").read_text()) == {
        "uuid": sd.uuid, "type": "file", "version": 1}


def test_open_without_expected_uuid(sd: FileDomain) -> None:
    assert open_file_domain(sd.location[0]).uuid == sd.uuid


def test_open_other_uuid(sd: FileDomain) -> None:
    with pytest.raises(InvalidRequest, match="holds storage domain"):
        open_file_domain(sd.location[0], new_id())


def test_create_twice(sd: FileDomain) -> None:
    with pytest.raises(Conflict, match="already holds a storage domain"):
        create_file_domain(sd.location[0], new_id())


def test_a_directory_with_files_is_not_made_a_domain(tmp_path: Path) -> None:
    """POST /domains formatted a directory of the user's images in place."""
    root = tmp_path / "images"
    root.mkdir()
    (root / "disk.qcow2").write_bytes(b"mine")
    (root / "other").mkdir()
    with pytest.raises(Conflict, match=r"is not empty \(it holds 'disk.qcow2' and 1 more\)"):
        create_file_domain(str(root), new_id())
    assert sorted(p.name for p in root.iterdir()) == ["disk.qcow2", "other"]
    fresh = tmp_path / "fresh-fs"
    (fresh / "lost+found").mkdir(parents=True)  # a new filesystem's, not files
    assert create_file_domain(str(fresh), new_id()).location == (str(fresh),)


def test_a_failed_create_can_be_retried(tmp_path: Path) -> None:
    """Its images/ directory stayed behind, and made the directory 'not empty'."""
    root = tmp_path / "dom"
    root.mkdir()
    with mock.patch("volume.filedomain.atomic_write",
                    side_effect=OSError(errno.ENOSPC, "No space left on device")), \
            pytest.raises(NoSpace):
        create_file_domain(str(root), new_id())
    assert list(root.iterdir()) == []
    sd = create_file_domain(str(root), new_id())
    assert open_file_domain(str(root)).uuid == sd.uuid


def test_location_missing(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="does not exist"):
        create_file_domain(str(tmp_path / "nowhere"), new_id())
    with pytest.raises(InvalidRequest, match="does not exist"):
        open_file_domain(str(tmp_path / "nowhere"))


def test_location_not_a_directory(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_bytes(b"")
    with pytest.raises(InvalidRequest, match="is not a directory"):
        create_file_domain(str(f), new_id())


def test_open_plain_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="is not a storage domain"):
        open_file_domain(str(tmp_path))


@pytest.mark.parametrize("bad", [
    pytest.param("not-a-uuid", id="junk"),
    pytest.param("", id="empty"),
    pytest.param(f"{{{uuid.UUID(int=1)}}}", id="braces"),
    pytest.param(uuid.UUID(int=1).hex, id="no-hyphens"),
    pytest.param("../../etc/passwd", id="path-traversal"),
    pytest.param(str(uuid.UUID(int=1)) + "\n", id="trailing-newline"),
])
def test_malformed_uuids(sd: FileDomain, tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidRequest, match="malformed UUID"):
        create_file_domain(str(tmp_path), bad)
    with pytest.raises(InvalidRequest, match="malformed UUID"):
        sd.create_volume(bad, new_id(), MiB)
    with pytest.raises(InvalidRequest, match="malformed UUID"):
        sd.create_volume(new_id(), bad, MiB)
    with pytest.raises(InvalidRequest, match="malformed UUID"):
        sd.lookup(new_id(), bad)
    with pytest.raises(InvalidRequest, match="malformed UUID"):
        sd.delete_volume(bad, new_id())
    with pytest.raises(InvalidRequest, match="malformed UUID"):
        sd.list_volumes(bad)


def test_upper_case_uuid_is_canonicalized(sd: FileDomain) -> None:
    img, vol = new_id(), new_id()
    sd.create_volume(img.upper(), vol.upper(), MiB)
    assert sd.lookup(img, vol).vol_uuid == vol


# Creating volumes


@pytest.mark.parametrize("fmt,allocation", KINDS)
def test_create(sd: FileDomain, fmt: Format, allocation: Allocation) -> None:
    img, vol = new_id(), new_id()
    size = 64 * MiB
    info = sd.create_volume(img, vol, size, format=fmt, allocation=allocation,
                            description="root disk")
    assert (info.sd_uuid, info.img_uuid, info.vol_uuid) == (sd.uuid, img, vol)
    assert (info.size, info.format, info.allocation) == (size, fmt, allocation)
    assert info.path == os.path.join(sd.location[0], "images", img, vol)
    assert (info.offset, info.length) == (0, None)
    qi = info_of(info.path, fmt)
    assert qi["format"] == fmt
    assert qi["virtual-size"] == size
    allocated = os.stat(info.path).st_blocks * 512
    if allocation == Allocation.PREALLOCATED:
        assert allocated >= size
    else:
        assert allocated < MiB
    assert sd.lookup(img, vol) == info


def test_create_exists(sd: FileDomain) -> None:
    img, vol = new_id(), new_id()
    sd.create_volume(img, vol, MiB)
    with pytest.raises(Conflict, match="already exists"):
        sd.create_volume(img, vol, MiB)


@pytest.mark.parametrize("kwargs,match", [
    pytest.param({"size": 0}, "positive integer", id="zero-size"),
    pytest.param({"size": -1}, "positive integer", id="negative-size"),
    pytest.param({"size": True}, "positive integer", id="bool-size"),
    pytest.param({"size": 10**30}, "positive integer up to", id="huge-size"),  # was a 500
    pytest.param({"format": "vmdk"}, "format must be one of raw, qcow2", id="format"),
    pytest.param({"allocation": "thin"}, "allocation must be one of", id="allocation"),
    pytest.param({"content": "PICTURES"}, "content type must be one of", id="content"),
    pytest.param({"description": "x" * 501}, "description", id="long-description"),
])
def test_create_bad_arguments(sd: FileDomain, kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"size": MiB, **kwargs}
    with pytest.raises(InvalidRequest, match=match):
        sd.create_volume(new_id(), new_id(), **args)
    assert sd.list_volumes() == []


def test_qcow2_child(sd: FileDomain) -> None:
    img, base, top = new_id(), new_id(), new_id()
    sd.create_volume(img, base, GiB, format=Format.QCOW2)
    child = sd.create_volume(img, top, 2 * GiB, format=Format.QCOW2, parent=base)
    qi = info_of(child.path, "qcow2")
    assert qi["backing-filename"] == base
    assert qi["backing-filename-format"] == "qcow2"
    assert child.parent == base
    with pytest.raises(Conflict, match="parent"):
        sd.delete_volume(img, base)
    sd.delete_volume(img, top)
    sd.delete_volume(img, base)


def test_child_must_be_qcow2(sd: FileDomain) -> None:
    img, base = new_id(), new_id()
    sd.create_volume(img, base, MiB)
    with pytest.raises(InvalidRequest, match="must be qcow2"):
        sd.create_volume(img, new_id(), MiB, parent=base)


def test_child_of_missing_parent(sd: FileDomain) -> None:
    with pytest.raises(NotFound):
        sd.create_volume(new_id(), new_id(), MiB, format=Format.QCOW2, parent=new_id())


def test_child_smaller_than_parent(sd: FileDomain) -> None:
    img, base = new_id(), new_id()
    sd.create_volume(img, base, 2 * MiB, format=Format.QCOW2)
    with pytest.raises(InvalidRequest, match="smaller than its parent"):
        sd.create_volume(img, new_id(), MiB, format=Format.QCOW2, parent=base)


def test_create_no_space(sd: FileDomain) -> None:
    img, vol = new_id(), new_id()
    enospc = OSError(errno.ENOSPC, "No space left on device")
    with mock.patch("volume._linux.fallocate", side_effect=enospc), \
            pytest.raises(NoSpace):
        sd.create_volume(img, vol, MiB, allocation=Allocation.PREALLOCATED)
    # Nothing is left behind: neither metadata nor a half-made data file.
    assert sd.list_volumes() == []
    assert os.listdir(os.path.join(sd.location[0], "images", img)) == []


def test_preallocate_without_fallocate(sd: FileDomain) -> None:
    unsupported = OSError(errno.EOPNOTSUPP, "Operation not supported")
    with mock.patch("volume._linux.fallocate", side_effect=unsupported):
        info = sd.create_volume(new_id(), new_id(), 3 * MiB + 512,
                                allocation=Allocation.PREALLOCATED)
    assert os.path.getsize(info.path) == 3 * MiB + 512
    assert os.stat(info.path).st_blocks * 512 >= 3 * MiB + 512


def test_metadata_survives_reopen(sd: FileDomain) -> None:
    img = new_id()
    made = [
        sd.create_volume(img, new_id(), MiB, content=Content.OVF_STORE, description="OVF"),
        sd.create_volume(img, new_id(), 2 * MiB, format=Format.QCOW2),
        sd.create_volume(new_id(), new_id(), 3 * MiB, allocation=Allocation.PREALLOCATED),
    ]
    fresh = open_file_domain(sd.location[0], sd.uuid)
    key = lambda v: (v.img_uuid, v.vol_uuid)  # noqa: E731
    assert fresh.list_volumes() == sorted(made, key=key)
    assert fresh.list_volumes(img) == sorted(made[:2], key=key)
    ovf = fresh.lookup(img, made[0].vol_uuid)
    assert (ovf.content, ovf.description) == (Content.OVF_STORE, "OVF")


def test_data_round_trip(sd: FileDomain) -> None:
    info = sd.create_volume(new_id(), new_id(), MiB)
    data = os.urandom(8192)
    with closing(open_data(info)) as vol:
        vol.write(4096, memoryview(data))
        vol.flush()
    with closing(open_data(sd.lookup(info.img_uuid, info.vol_uuid), readonly=True)) as vol:
        buf = bytearray(8192)
        assert vol.readinto(4096, memoryview(buf)) == 8192
    assert bytes(buf) == data


# Resize


@pytest.mark.parametrize("fmt,allocation", KINDS)
def test_resize(sd: FileDomain, fmt: Format, allocation: Allocation) -> None:
    img, vol = new_id(), new_id()
    sd.create_volume(img, vol, 4 * MiB, format=fmt, allocation=allocation)
    info = sd.resize_volume(img, vol, 10 * MiB)
    assert info.size == 10 * MiB
    assert info_of(info.path, fmt)["virtual-size"] == 10 * MiB
    assert open_file_domain(sd.location[0]).lookup(img, vol).size == 10 * MiB
    if allocation == Allocation.PREALLOCATED:
        assert os.stat(info.path).st_blocks * 512 >= 10 * MiB


def test_resize_same_size(sd: FileDomain) -> None:
    info = sd.create_volume(new_id(), new_id(), MiB)
    assert sd.resize_volume(info.img_uuid, info.vol_uuid, MiB) == info


def test_resize_shrink(sd: FileDomain) -> None:
    info = sd.create_volume(new_id(), new_id(), 2 * MiB)
    with pytest.raises(InvalidRequest, match="cannot shrink"):
        sd.resize_volume(info.img_uuid, info.vol_uuid, MiB)


def test_resize_corrupt_qcow2(sd: FileDomain) -> None:
    info = sd.create_volume(new_id(), new_id(), MiB, format=Format.QCOW2)
    image = bytearray(Path(info.path).read_bytes())
    Path(info.path).write_bytes(b"not a qcow2 image" * 100)
    with pytest.raises(UnsafeImage, match="does not start with a qcow2 header"):
        sd.resize_volume(info.img_uuid, info.vol_uuid, 2 * MiB)
    image[79] |= 2  # incompatible feature "corrupt": qemu-img refuses to write it
    Path(info.path).write_bytes(image)
    with pytest.raises(VolumeError, match=r"qemu-img failed \(exit code 1\)") as e:
        sd.resize_volume(info.img_uuid, info.vol_uuid, 2 * MiB)
    assert info.path not in str(e.value)
    assert sd.lookup(info.img_uuid, info.vol_uuid).size == MiB


def test_resize_missing(sd: FileDomain) -> None:
    with pytest.raises(NotFound):
        sd.resize_volume(new_id(), new_id(), MiB)


# Delete and crash recovery


def test_delete(sd: FileDomain) -> None:
    img, a, b = new_id(), new_id(), new_id()
    sd.create_volume(img, a, MiB)
    sd.create_volume(img, b, MiB, format=Format.QCOW2)
    sd.delete_volume(img, a)
    with pytest.raises(NotFound):
        sd.lookup(img, a)
    assert [v.vol_uuid for v in sd.list_volumes()] == [b]
    sd.delete_volume(img, b)
    assert sd.list_volumes() == []
    # The empty image directory goes too.
    assert os.listdir(os.path.join(sd.location[0], "images")) == []
    with pytest.raises(NotFound):
        sd.delete_volume(img, b)


def test_delete_refuses_an_ovf_store(sd: FileDomain) -> None:
    store = sd.create_volume(new_id(), new_id(), MiB, content=Content.OVF_STORE)
    with pytest.raises(Forbidden, match="is an OVF store: the daemon manages"):
        sd.delete_volume(store.img_uuid, store.vol_uuid)
    assert sd.list_volumes() == [store]
    assert os.path.getsize(store.path) == MiB


def test_delete_interrupted(sd: FileDomain) -> None:
    info = sd.create_volume(new_id(), new_id(), MiB)
    eio = OSError(errno.EIO, "Input/output error")
    with mock.patch("volume._confined.remove", side_effect=eio), \
            pytest.raises(VolumeError):
        sd.delete_volume(info.img_uuid, info.vol_uuid)
    # The data is still there, but the volume is gone for every reader...
    assert os.path.exists(info.path)
    with pytest.raises(NotFound, match="being deleted"):
        sd.lookup(info.img_uuid, info.vol_uuid)
    assert sd.list_volumes() == []
    # ...and deleting again finishes the job.
    sd.delete_volume(info.img_uuid, info.vol_uuid)
    assert not os.path.exists(info.path)
    assert not os.path.exists(info.path + ".meta")


def test_delete_on_a_full_domain_removes_the_data_before_the_mark(sd: FileDomain) -> None:
    """The mark is a new file: with no room for it, the data goes first."""
    info = sd.create_volume(new_id(), new_id(), MiB)
    write_meta, full = sd._write_meta, [OSError(errno.ENOSPC, "No space left on device")]

    def mark(record: VolumeInfo, state: str) -> None:
        if full:
            raise full.pop()
        assert not os.path.exists(info.path)
        write_meta(record, state)

    with mock.patch.object(sd, "_write_meta", side_effect=mark) as marked:
        sd.delete_volume(info.img_uuid, info.vol_uuid)
    assert marked.call_count == 2
    assert os.listdir(os.path.join(sd.location[0], "images")) == []


def test_create_over_interrupted_delete(sd: FileDomain) -> None:
    info = sd.create_volume(new_id(), new_id(), MiB)
    with mock.patch("volume._confined.remove",
                    side_effect=OSError(errno.EIO, "Input/output error")), \
            pytest.raises(VolumeError):
        sd.delete_volume(info.img_uuid, info.vol_uuid)
    again = sd.create_volume(info.img_uuid, info.vol_uuid, 2 * MiB)
    assert sd.lookup(info.img_uuid, info.vol_uuid) == again


def test_crashed_create_leaves_no_volume(sd: FileDomain) -> None:
    # A crash between writing the data and its metadata: data, no metadata.
    img, vol = new_id(), new_id()
    image_dir = Path(sd.location[0], "images", img)
    image_dir.mkdir()
    (image_dir / vol).write_bytes(b"half made")
    with pytest.raises(NotFound):
        sd.lookup(img, vol)
    assert sd.list_volumes() == []
    info = sd.create_volume(img, vol, MiB)
    assert os.path.getsize(info.path) == MiB


def test_metadata_without_data(sd: FileDomain) -> None:
    info = sd.create_volume(new_id(), new_id(), MiB)
    os.unlink(info.path)
    with pytest.raises(VolumeError, match="missing"):
        sd.lookup(info.img_uuid, info.vol_uuid)


def test_corrupt_metadata(sd: FileDomain) -> None:
    info = sd.create_volume(new_id(), new_id(), MiB)
    Path(info.path + ".meta").write_text("{not json")
    with pytest.raises(VolumeError, match="corrupt"):
        sd.lookup(info.img_uuid, info.vol_uuid)
    assert sd.list_volumes() == []


# Space and health


def test_space(sd: FileDomain) -> None:
    space = sd.space()
    assert 0 < space.free <= space.total


def test_check(sd: FileDomain) -> None:
    sd.check()
    os.rename(os.path.join(sd.location[0], "images"), os.path.join(sd.location[0], "x"))
    with pytest.raises(VolumeError, match="unreachable"):
        sd.check()


def test_check_replaced_domain(sd: FileDomain) -> None:
    Path(sd.location[0], "domain.json").write_text(json.dumps(
        {"uuid": new_id(), "type": "file", "version": 1}))
    with pytest.raises(VolumeError, match="replaced"):
        sd.check()
