"""Regression tests for bugs found auditing ``volume/``: each failed before its fix."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import uuid
from contextlib import closing
from pathlib import Path
from unittest import mock

import pytest

from tests.conftest import LoopDeviceFactory
from volume import open_volume
from volume.blockdomain import create_block_domain, open_block_domain
from volume.durable import atomic_write, atomic_write_at
from volume.errors import InvalidRequest, NoSpace, VolumeError
from volume.file import create
from volume.filedomain import create_file_domain
from volume.sd import Allocation, Format, VolumeInfo

MiB = 1 << 20


def new_id() -> str:
    return str(uuid.uuid4())


def fill(directory: Path) -> None:
    """Take every free byte of the filesystem of ``directory``."""
    st = os.statvfs(directory)
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, st.f_bavail * st.f_frsize)
    finally:
        os.close(fd)
    assert os.statvfs(directory).f_bavail == 0


# A write of no bytes at an unaligned offset read-modify-wrote a whole block.


def test_empty_write_past_eof_keeps_the_size(tmp_path: Path) -> None:
    path = str(tmp_path / "volume")
    create(path, 0, sparse=True)
    with open(path, "wb") as f:
        f.write(b"x" * 1000)
    vol = open_volume(path, direct=True)
    try:
        assert vol.capabilities.block_size > 1
        vol.write(5000, memoryview(b""))
        # As pwrite(2) of 0 bytes, and as the buffered volume: nothing changes.
        assert vol.size() == 1000
    finally:
        vol.close()
    assert os.path.getsize(path) == 1000


# A close that failed left the descriptor number to be closed again.


def test_close_after_failed_close_leaves_a_reused_descriptor_alone(tmp_path: Path) -> None:
    path = str(tmp_path / "volume")
    create(path, 4096, sparse=True)
    vol = open_volume(path)
    closed: list[int] = []
    real_close = os.close

    def close_then_eio(fd: int) -> None:
        # close(2): the descriptor is released even when close reports EIO.
        real_close(fd)
        closed.append(fd)
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    with mock.patch("os.close", close_then_eio), pytest.raises(VolumeError):
        vol.close()
    assert len(closed) == 1
    # Another file now gets that descriptor number, as it would in the daemon.
    other = os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT, 0o600)
    if other != closed[0]:
        os.dup2(other, closed[0])
        os.close(other)
    try:
        vol.close()
        os.fstat(closed[0])  # still open: not closed on the other file's behalf
    finally:
        os.close(closed[0])


# Every pool map change opens new domain objects while requests on the old
# ones still run; each object had its own lock, so two creates could read
# the same volume table and the last commit dropped the other's volumes.


def test_two_objects_of_one_block_domain_do_not_lose_volumes(
    loop_device: LoopDeviceFactory,
) -> None:
    device = loop_device(32 * MiB)
    sd_uuid = new_id()
    create_block_domain([device], sd_uuid)
    objects = [open_block_domain([device], sd_uuid) for _ in range(2)]
    made: list[VolumeInfo] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(objects))

    def creates(index: int) -> None:
        barrier.wait()
        try:
            for _ in range(4):
                made.append(objects[index].create_volume(new_id(), new_id(), MiB))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=creates, args=(i,)) for i in range(len(objects))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    listed = open_block_domain([device], sd_uuid).list_volumes()
    assert sorted(v.vol_uuid for v in listed) == sorted(v.vol_uuid for v in made)
    assert len({v.offset for v in listed}) == len(made)  # no two share a region


# A create that failed writing its metadata left the data file behind.


def test_create_failing_on_metadata_leaves_no_data(tiny_fs: Path) -> None:
    sd = create_file_domain(str(tiny_fs), new_id())
    img, vol = new_id(), new_id()
    free = sd.space().free
    # The data takes every free byte, so the metadata file finds none.
    with pytest.raises(Exception, match="no space"):
        sd.create_volume(img, vol, free, allocation=Allocation.PREALLOCATED)
    assert sd.list_volumes() == []
    assert not os.path.exists(tiny_fs / "images" / img / vol)
    assert sd.space().free == free


# Deleting a volume on a full file domain failed: the "deleting" mark is a
# new metadata file, which needs the space the delete is meant to free.


def test_delete_on_a_full_file_domain(tiny_fs: Path) -> None:
    sd = create_file_domain(str(tiny_fs), new_id())
    img, vol = new_id(), new_id()
    sd.create_volume(img, vol, MiB, allocation=Allocation.PREALLOCATED)
    fill(tiny_fs)
    sd.delete_volume(img, vol)
    assert sd.list_volumes() == []
    assert os.listdir(tiny_fs / "images") == []
    assert sd.space().free >= MiB


# A resize that ran out of space kept the file grown by what fallocate had
# allocated (ext4 keeps it), while the metadata kept the old size.


def test_failed_resize_gives_the_space_back(small_ext4: Path) -> None:
    root = small_ext4 / "sd"
    root.mkdir()
    sd = create_file_domain(str(root), new_id())
    img, vol = new_id(), new_id()
    info = sd.create_volume(img, vol, MiB, allocation=Allocation.PREALLOCATED)
    free = sd.space().free
    # More than the free space and the blocks ext4 reserves for root.
    with pytest.raises(NoSpace):
        sd.resize_volume(img, vol, MiB + free + 16 * MiB)
    assert sd.lookup(img, vol).size == MiB
    assert os.path.getsize(info.path) == MiB
    assert sd.space().free > free - MiB  # give or take ext4's extent tree blocks


# A volume larger than the filesystem allows a file to be (ext4: 16 TiB)
# or qcow2 to describe answered 500 "storage error" (EFBIG, qemu-img's exit
# code): the request is what is wrong, and nothing of it may stay.


@pytest.mark.parametrize("fmt,allocation,size", [
    (Format.RAW, Allocation.SPARSE, 2**62),
    (Format.RAW, Allocation.PREALLOCATED, 2**62),
    (Format.QCOW2, Allocation.SPARSE, 2**62),
    (Format.QCOW2, Allocation.SPARSE, 2**63 - 1),
])
def test_a_volume_too_large_for_the_storage_is_a_bad_request(
        small_ext4: Path, fmt: Format, allocation: Allocation, size: int) -> None:
    root = small_ext4 / "sd"
    root.mkdir()
    sd = create_file_domain(str(root), new_id())
    with pytest.raises(InvalidRequest, match="larger than"):
        sd.create_volume(new_id(), new_id(), size, format=fmt, allocation=allocation)
    assert sd.list_volumes() == []
    img, vol = new_id(), new_id()
    sd.create_volume(img, vol, MiB, format=fmt, allocation=allocation)
    with pytest.raises(InvalidRequest, match="larger than"):
        sd.resize_volume(img, vol, size)
    assert sd.lookup(img, vol).size == MiB


# atomic_write closed its temp file's descriptor a second time after a
# failed close: EBADF replaced the real error (or, in the threaded daemon,
# another file that got the number was closed).


def test_atomic_write_failed_close_keeps_the_old_copy(tmp_path: Path) -> None:
    path = tmp_path / "meta"
    path.write_bytes(b"old")
    real_close = os.close
    calls: list[int] = []

    def close_then_eio(fd: int) -> None:
        real_close(fd)
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    with mock.patch("os.close", close_then_eio), pytest.raises(OSError) as raised:
        atomic_write(str(path), b"new")
    assert raised.value.errno == errno.EIO
    assert len(calls) == len(set(calls))  # no descriptor closed twice
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["meta"]  # the temp file is gone


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".", ""])
def test_atomic_write_at_writes_a_name_in_its_directory_only(tmp_path: Path, name: str) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    fd = os.open(inner, os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(ValueError, match="not a name in a directory"):
            atomic_write_at(fd, name, b"x")
        atomic_write_at(fd, "meta", b"x")
    finally:
        os.close(fd)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["inner", "meta"]


# A device that shrank under its volumes: the domain said all was well,
# reported negative free space, and a lookup handed out a region that then
# failed to open as a client error (InvalidRequest, 400).


def test_block_domain_on_a_device_that_shrank(loop_device: LoopDeviceFactory) -> None:
    device = loop_device(32 * MiB)
    sd = create_block_domain([device], new_id())
    img = new_id()
    kept = sd.create_volume(img, new_id(), 4 * MiB)
    lost = sd.create_volume(img, new_id(), 20 * MiB)
    name = os.path.basename(device)
    with open(f"/sys/block/{name}/loop/backing_file") as f:
        backing = f.read().strip()
    os.truncate(backing, 16 * MiB)
    subprocess.run(["losetup", "--set-capacity", device], check=True)
    with closing(open_volume(device, readonly=True)) as whole:
        assert whole.size() == 16 * MiB

    assert sd.space().free == 0
    assert sd.lookup(img, kept.vol_uuid) == kept
    with pytest.raises(VolumeError, match="shrank"):
        sd.lookup(img, lost.vol_uuid)
    with pytest.raises(VolumeError, match="shrank"):
        sd.check()
