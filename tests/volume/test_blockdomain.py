"""Block domains on real loop devices, and the region view of a volume."""

from __future__ import annotations

import os
import uuid
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import LoopDeviceFactory
from volume import MemoryVolume, blockmeta
from volume.blockdomain import BlockDomain, create_block_domain, open_block_domain
from volume.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NoSpace,
    NotFound,
    OutOfRange,
    VolumeError,
)
from volume.region import RegionVolume
from volume.sd import Allocation, Content, Format, VolumeInfo, open_data

MiB = 1 << 20


def new_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def devices(loop_device: LoopDeviceFactory) -> tuple[str, str]:
    """Two devices of different sizes: 1 MiB of each is metadata."""
    return loop_device(17 * MiB), loop_device(9 * MiB)


@pytest.fixture
def sd(devices: tuple[str, str]) -> BlockDomain:
    return create_block_domain(list(devices), new_id())


def write(info: VolumeInfo, offset: int, data: bytes) -> None:
    with closing(open_data(info)) as vol:
        vol.write(offset, memoryview(data))
        vol.flush()


def read(info: VolumeInfo, offset: int, length: int) -> bytes:
    buf = bytearray(length)
    with closing(open_data(info, readonly=True)) as vol:
        n = vol.readinto(offset, memoryview(buf))
    return bytes(buf[:n])


def read_device(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


# Volumes across two devices, seen by a fresh object


def test_volumes_on_both_devices(sd: BlockDomain, devices: tuple[str, str]) -> None:
    img = new_id()
    a = sd.create_volume(img, new_id(), 12 * MiB, description="first")
    b = sd.create_volume(img, new_id(), 5 * MiB + 512, content=Content.OVF_STORE)
    c = sd.create_volume(new_id(), new_id(), 3 * MiB)
    assert (a.path, a.offset, a.length) == (devices[0], MiB, 12 * MiB)
    # b does not fit in what is left of the first device (3 MiB): first fit
    # puts it on the second; c then fits in the gap on the first.
    assert (b.path, b.offset, b.length) == (devices[1], MiB, 5 * MiB + 512)
    assert (c.path, c.offset) == (devices[0], 13 * MiB)
    assert a.format == Format.RAW and a.allocation == Allocation.PREALLOCATED

    data = os.urandom(64 * 1024)
    write(b, 5 * MiB + 512 - len(data), data)

    # Another host: the same devices, in another order, a fresh object.
    fresh = open_block_domain([devices[1], devices[0]], sd.uuid)
    assert fresh.location == devices
    assert fresh.list_volumes() == sd.list_volumes()
    assert sorted(fresh.list_volumes(), key=lambda v: v.length or 0) == [c, b, a]
    assert fresh.list_volumes(img) == sorted([a, b], key=lambda v: v.vol_uuid)
    again = fresh.lookup(img, b.vol_uuid)
    assert again == b
    assert again.content == Content.OVF_STORE
    assert read(again, 5 * MiB + 512 - len(data), len(data)) == data


def test_open_without_expected_uuid(sd: BlockDomain, devices: tuple[str, str]) -> None:
    assert open_block_domain(list(devices)).uuid == sd.uuid


def test_new_volume_reads_zeros(sd: BlockDomain) -> None:
    img = new_id()
    old = sd.create_volume(img, new_id(), 2 * MiB)
    write(old, 0, b"\xff" * (2 * MiB))
    sd.delete_volume(img, old.vol_uuid)
    new = sd.create_volume(img, new_id(), 2 * MiB)
    assert (new.path, new.offset) == (old.path, old.offset)
    assert read(new, 0, 2 * MiB) == bytes(2 * MiB)


def test_create_exists(sd: BlockDomain) -> None:
    img, vol = new_id(), new_id()
    sd.create_volume(img, vol, MiB)
    with pytest.raises(Conflict, match="already exists"):
        sd.create_volume(img, vol, MiB)


def test_qcow2_refused(sd: BlockDomain) -> None:
    with pytest.raises(InvalidRequest, match="qcow2 is not supported"):
        sd.create_volume(new_id(), new_id(), MiB, format=Format.QCOW2)
    with pytest.raises(InvalidRequest, match="without a parent"):
        sd.create_volume(new_id(), new_id(), MiB, parent=new_id())


def test_malformed_uuids(sd: BlockDomain) -> None:
    with pytest.raises(InvalidRequest, match="malformed UUID"):
        sd.create_volume("nope", new_id(), MiB)
    with pytest.raises(InvalidRequest, match="malformed UUID"):
        sd.lookup(new_id(), "nope")
    with pytest.raises(InvalidRequest, match="malformed UUID"):
        open_block_domain([sd.location[0]], "nope")


# Space


def test_out_of_space(sd: BlockDomain) -> None:
    with pytest.raises(NoSpace, match="no free region"):
        sd.create_volume(new_id(), new_id(), 16 * MiB + 1)
    sd.create_volume(new_id(), new_id(), 16 * MiB)
    sd.create_volume(new_id(), new_id(), 8 * MiB)
    with pytest.raises(NoSpace):
        sd.create_volume(new_id(), new_id(), 1)
    assert sd.space().free == 0


def test_space(sd: BlockDomain) -> None:
    assert sd.space().total == sd.space().free == 24 * MiB
    info = sd.create_volume(new_id(), new_id(), MiB + 1)  # rounded up to 2 MiB
    assert sd.space().free == 22 * MiB
    sd.delete_volume(info.img_uuid, info.vol_uuid)
    assert sd.space().free == 24 * MiB


# Resize and delete


def test_resize_in_place(sd: BlockDomain) -> None:
    img = new_id()
    info = sd.create_volume(img, new_id(), 2 * MiB)
    grown = sd.resize_volume(img, info.vol_uuid, 6 * MiB)
    assert (grown.offset, grown.length, grown.size) == (info.offset, 6 * MiB, 6 * MiB)
    assert open_block_domain(list(sd.location)).lookup(img, info.vol_uuid) == grown
    assert read(grown, 0, 6 * MiB) == bytes(6 * MiB)
    with pytest.raises(OutOfRange):
        write(info, 2 * MiB, b"x")
    write(grown, 2 * MiB, b"x")


def test_resize_blocked_by_neighbour(sd: BlockDomain) -> None:
    img = new_id()
    first = sd.create_volume(img, new_id(), 2 * MiB)
    sd.create_volume(img, new_id(), 2 * MiB)
    with pytest.raises(NoSpace, match="cannot grow in place"):
        sd.resize_volume(img, first.vol_uuid, 3 * MiB)
    # Within the reserved MiB is fine.
    assert sd.resize_volume(img, first.vol_uuid, 2 * MiB).size == 2 * MiB


def test_resize_past_device_end(sd: BlockDomain) -> None:
    info = sd.create_volume(new_id(), new_id(), 8 * MiB)
    assert info.path == sd.location[0]
    sd.resize_volume(info.img_uuid, info.vol_uuid, 16 * MiB)
    with pytest.raises(NoSpace):
        sd.resize_volume(info.img_uuid, info.vol_uuid, 17 * MiB)


def test_resize_shrink(sd: BlockDomain) -> None:
    info = sd.create_volume(new_id(), new_id(), 2 * MiB)
    with pytest.raises(InvalidRequest, match="cannot shrink"):
        sd.resize_volume(info.img_uuid, info.vol_uuid, MiB)


def test_delete(sd: BlockDomain) -> None:
    img = new_id()
    a = sd.create_volume(img, new_id(), MiB)
    b = sd.create_volume(img, new_id(), MiB)
    sd.delete_volume(img, a.vol_uuid)
    with pytest.raises(NotFound):
        sd.lookup(img, a.vol_uuid)
    with pytest.raises(NotFound):
        sd.delete_volume(img, a.vol_uuid)
    assert open_block_domain(list(sd.location)).list_volumes() == [b]


def test_delete_refuses_an_ovf_store(sd: BlockDomain) -> None:
    store = sd.create_volume(new_id(), new_id(), MiB, content=Content.OVF_STORE)
    with pytest.raises(Forbidden, match="is an OVF store: the daemon manages"):
        sd.delete_volume(store.img_uuid, store.vol_uuid)
    assert open_block_domain(list(sd.location)).list_volumes() == [store]


# Crash safety of the volume table


def newest_slot(device: str, sd_uuid: str) -> int:
    fd = blockmeta.open_device(device)
    try:
        found = blockmeta.read_table(fd, sd_uuid)
    finally:
        os.close(fd)
    assert found is not None
    return found[0]


def smash(device: str, offset: int, data: bytes) -> None:
    fd = os.open(device, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_torn_slot_falls_back(sd: BlockDomain) -> None:
    img = new_id()
    a = sd.create_volume(img, new_id(), MiB)
    b = sd.create_volume(img, new_id(), MiB)
    generation = newest_slot(sd.location[0], sd.uuid)
    # A torn write of the newest table: its first KiB is garbage.
    smash(sd.location[0], blockmeta.slot_offset(generation) + 100, os.urandom(1024))
    fresh = open_block_domain(list(sd.location), sd.uuid)
    assert fresh.list_volumes() == [a]
    assert newest_slot(sd.location[0], sd.uuid) == generation - 1
    # The next change goes into the torn slot, and b's region is free again.
    c = fresh.create_volume(img, new_id(), MiB)
    assert (c.path, c.offset) == (b.path, b.offset)
    assert open_block_domain(list(sd.location)).list_volumes() == sorted(
        [a, c], key=lambda v: v.vol_uuid)


def test_both_slots_torn(sd: BlockDomain) -> None:
    for offset in blockmeta.SLOT_OFFSETS:
        smash(sd.location[0], offset, b"\0" * 4096)
    with pytest.raises(VolumeError, match="no valid volume table"):
        sd.list_volumes()
    with pytest.raises(VolumeError):
        sd.check()


def test_check(sd: BlockDomain) -> None:
    sd.check()
    smash(sd.location[1], 0, b"\0" * 4096)
    with pytest.raises(VolumeError, match="lost its label"):
        sd.check()


def test_record_round_trip() -> None:
    record = blockmeta.encode(blockmeta.TABLE_MAGIC, 7, {"a": [1, 2]}, 4096)
    assert len(record) == 4096
    assert blockmeta.decode(blockmeta.TABLE_MAGIC, record) == (7, {"a": [1, 2]})
    assert blockmeta.decode(blockmeta.LABEL_MAGIC, record) is None
    flipped = bytearray(record)
    flipped[blockmeta.HEADER_SIZE + 2] ^= 1
    assert blockmeta.decode(blockmeta.TABLE_MAGIC, bytes(flipped)) is None


def test_table_full() -> None:
    with pytest.raises(NoSpace, match="metadata area is full"):
        blockmeta.encode(blockmeta.TABLE_MAGIC, 1, {"x": "y" * 4096}, 4096)


# Creating and attaching domains


def test_create_on_labelled_device(sd: BlockDomain) -> None:
    with pytest.raises(Conflict, match="already belongs to storage domain"):
        create_block_domain([sd.location[1]], new_id())


def test_open_unlabelled_device(loop_device: LoopDeviceFactory) -> None:
    with pytest.raises(InvalidRequest, match="not part of a storage domain"):
        open_block_domain([loop_device(4 * MiB)])


def test_open_other_uuid(sd: BlockDomain) -> None:
    with pytest.raises(InvalidRequest, match="belongs to storage domain"):
        open_block_domain(list(sd.location), new_id())


def test_open_missing_device(sd: BlockDomain) -> None:
    with pytest.raises(InvalidRequest, match="not all of them"):
        open_block_domain([sd.location[0]], sd.uuid)
    with pytest.raises(InvalidRequest, match="not all of them"):
        open_block_domain([sd.location[1]], sd.uuid)


def test_devices_of_two_domains(sd: BlockDomain, loop_device: LoopDeviceFactory) -> None:
    other = create_block_domain([loop_device(4 * MiB)], new_id())
    with pytest.raises(InvalidRequest, match="belongs to storage domain"):
        open_block_domain([*sd.location, *other.location])


def test_regular_file_is_not_a_device(tmp_path: Path) -> None:
    f = tmp_path / "disk.img"
    f.write_bytes(bytes(4 * MiB))
    with pytest.raises(InvalidRequest, match="is not a block device"):
        create_block_domain([str(f)], new_id())
    with pytest.raises(InvalidRequest, match="is not a block device"):
        open_block_domain([str(f)])


def test_missing_device(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="does not exist"):
        create_block_domain([str(tmp_path / "sdz")], new_id())


@pytest.mark.parametrize("bad", [
    pytest.param([], id="empty"),
    pytest.param("/dev/loop0", id="a-string"),
])
def test_bad_device_list(bad: list[str]) -> None:
    with pytest.raises(InvalidRequest, match="list of one or more devices"):
        create_block_domain(bad, new_id())


def test_device_given_twice(loop_device: LoopDeviceFactory) -> None:
    dev = loop_device(4 * MiB)
    with pytest.raises(InvalidRequest, match="given twice"):
        create_block_domain([dev, dev], new_id())


def test_device_too_small(loop_device: LoopDeviceFactory) -> None:
    with pytest.raises(InvalidRequest, match="too small"):
        create_block_domain([loop_device(MiB)], new_id())


def test_a_format_cut_off_before_the_first_label_can_be_redone(
        loop_device: LoopDeviceFactory) -> None:
    """Labels are written last to first: a crash before the first device's
    label left the others labelled, and every retry refused them."""
    devices = [loop_device(8 * MiB), loop_device(4 * MiB)]
    sd_uuid = new_id()
    create_block_domain(devices, sd_uuid)
    smash(devices[0], 0, bytes(4096))  # the first label, never written
    with pytest.raises(Conflict, match="already belongs"):
        create_block_domain(devices, new_id())  # another domain: still refused
    with pytest.raises(Conflict, match="already belongs"):
        create_block_domain([loop_device(8 * MiB), devices[1]], sd_uuid)  # other devices
    again = create_block_domain(devices, sd_uuid)
    again.create_volume(new_id(), new_id(), MiB)
    assert len(open_block_domain(devices[::-1], sd_uuid).list_volumes()) == 1


def test_a_finished_domain_is_never_formatted_again(sd: BlockDomain) -> None:
    with pytest.raises(Conflict, match="already belongs"):
        create_block_domain(list(sd.location), sd.uuid)


def test_format_clears_old_tables(loop_device: LoopDeviceFactory) -> None:
    dev = loop_device(8 * MiB)
    first = create_block_domain([dev], new_id())
    for _ in range(3):
        first.create_volume(new_id(), new_id(), MiB)
    smash(dev, 0, bytes(4096))  # wipe the label to allow a new format
    second = create_block_domain([dev], new_id())
    assert second.list_volumes() == []


# RegionVolume


def region(data: bytes, offset: int, length: int) -> RegionVolume:
    return RegionVolume(MemoryVolume(data), offset, length)


def test_region_shifts_offsets() -> None:
    inner = MemoryVolume(bytes(100))
    r = RegionVolume(inner, 10, 20)
    assert r.size() == 20
    r.write(0, memoryview(b"a" * 20))
    buf = bytearray(100)
    inner.readinto(0, memoryview(buf))
    assert buf == bytes(10) + b"a" * 20 + bytes(70)
    r.zero(5, 5)
    out = bytearray(30)
    assert r.readinto(0, memoryview(out)) == 20
    assert out[:20] == b"a" * 5 + bytes(5) + b"a" * 10


@pytest.mark.parametrize("offset,length", [
    pytest.param(19, 2, id="straddles-end"),
    pytest.param(20, 1, id="at-end"),
    pytest.param(1000, 1, id="far-past-end"),
])
def test_region_write_out_of_range(offset: int, length: int) -> None:
    r = region(bytes(100), 10, 20)
    with pytest.raises(OutOfRange) as e:
        r.write(offset, memoryview(b"x" * length))
    assert e.value.size == 20
    with pytest.raises(OutOfRange):
        r.zero(offset, length)


def test_region_negative_offset() -> None:
    r = region(bytes(100), 10, 20)
    with pytest.raises(InvalidRequest):
        r.write(-1, memoryview(b"x"))
    with pytest.raises(InvalidRequest):
        r.readinto(-1, memoryview(bytearray(1)))


def test_region_read_at_and_past_end() -> None:
    r = region(b"0123456789" * 10, 10, 20)
    assert r.readinto(20, memoryview(bytearray(5))) == 0
    with pytest.raises(OutOfRange):
        r.readinto(21, memoryview(bytearray(5)))


def test_region_extents_and_capabilities() -> None:
    r = region(bytes(100), 10, 20)
    assert [(e.start, e.length, e.zero) for e in r.extents()] == [(0, 20, False)]
    assert r.capabilities.real_extents is False


def test_region_must_fit() -> None:
    with pytest.raises(InvalidRequest, match="does not fit"):
        region(bytes(100), 90, 20)


def test_region_on_device_spares_neighbours(sd: BlockDomain) -> None:
    img = new_id()
    a = sd.create_volume(img, new_id(), MiB)
    b = sd.create_volume(img, new_id(), MiB)
    write(b, 0, b"b" * MiB)
    with pytest.raises(OutOfRange):
        write(a, MiB - 1, b"ab")
    write(a, 0, b"a" * MiB)
    assert read_device(a.path, a.offset, 2 * MiB) == b"a" * MiB + b"b" * MiB
    assert read(a, MiB - 10, 100) == b"a" * 10
