"""OVF stores: creating them, reading and verifying them, and oVirt's
``dd | tar`` readers, on file domains and on block domains over loop devices."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import LoopDeviceFactory
from tests.volume.ovfstore_crasher import make_tar
from tests.volume.ovfstore_util import (
    CAPACITY,
    STORE,
    MiB,
    digest,
    make_storage,
    new_id,
    newest,
    open_stores,
    plant,
    update,
)
from tests.volume.test_blockdomain import read as peek
from tests.volume.test_blockdomain import write as poke
from volume.errors import Forbidden, InvalidRequest, NotFound, OutOfRange
from volume.filedomain import FileDomain
from volume.ovfstore import RECORD_SIZE, OvfStores, ensure_stores
from volume.sd import Allocation, Content, Format, StorageDomain, VolumeInfo


@pytest.fixture(params=["file", "block"])
def storage(request: pytest.FixtureRequest, tmp_path: Path,
            loop_device: LoopDeviceFactory) -> StorageDomain:
    return make_storage(request.param, tmp_path, loop_device)


@pytest.fixture
def file_storage(tmp_path: Path) -> FileDomain:
    storage = make_storage("file", tmp_path)
    assert isinstance(storage, FileDomain)
    return storage


# Creating stores


def test_ensure_stores_is_idempotent(storage: StorageDomain) -> None:
    made = ensure_stores(storage, 2, STORE)
    assert len(made) == 2
    for info in made:
        assert (info.content, info.format, info.size) == (Content.OVF_STORE, Format.RAW, STORE)
        assert info.allocation == Allocation.PREALLOCATED
        desc = json.loads(info.description)
        assert desc == {"Disk Description": "OVF_STORE",
                        "Storage Domains": [{"uuid": storage.uuid}]}
    assert ensure_stores(storage, 2, STORE) == made
    assert ensure_stores(storage, 1, STORE) == made
    more = ensure_stores(storage, 3, STORE)
    assert len(more) == 3 and set(made) < set(more)
    assert OvfStores.open(storage).stores == more


@pytest.mark.parametrize("count", [0, 17, -1, True, "2", 1.5])
def test_ensure_stores_count_validated(file_storage: FileDomain, count: object) -> None:
    with pytest.raises(InvalidRequest, match="count"):
        ensure_stores(file_storage, count, STORE)  # type: ignore[arg-type]
    assert file_storage.list_volumes() == []


@pytest.mark.parametrize("count", [1, 16])
def test_ensure_stores_count_limits(file_storage: FileDomain, count: int) -> None:
    assert len(ensure_stores(file_storage, count, 1 * MiB)) == count


@pytest.mark.parametrize("size", [0, MiB - RECORD_SIZE, MiB + 512, True])
def test_ensure_stores_size_validated(file_storage: FileDomain, size: object) -> None:
    with pytest.raises(InvalidRequest, match="size"):
        ensure_stores(file_storage, 2, size)  # type: ignore[arg-type]


def test_other_volumes_and_unusable_stores_are_ignored(file_storage: FileDomain) -> None:
    file_storage.create_volume(new_id(), new_id(), STORE)
    file_storage.create_volume(new_id(), new_id(), STORE, format=Format.QCOW2,
                               content=Content.OVF_STORE)
    small = file_storage.create_volume(new_id(), new_id(), 2 * MiB, content=Content.OVF_STORE)
    made = ensure_stores(file_storage, 2, STORE)
    assert small in made and len(made) == 2
    stores = OvfStores.open(file_storage)
    assert stores.capacity == 2 * MiB - RECORD_SIZE


# The first update, and reading back


def test_new_stores_were_never_updated(storage: StorageDomain) -> None:
    stores = open_stores(storage)
    assert stores.capacity == CAPACITY
    states = stores.states()
    assert [(s.index, s.record, s.valid, s.error) for s in states] == [
        (0, None, False, "never updated"), (1, None, False, "never updated")]
    assert states[0].to_json() == {
        "index": 0, "img_uuid": states[0].volume.img_uuid,
        "vol_uuid": states[0].volume.vol_uuid, "size": STORE,
        "valid": False, "error": "never updated", "record": None}
    assert stores.newest() is None


def test_no_stores(file_storage: FileDomain) -> None:
    stores = OvfStores.open(file_storage)
    assert (stores.capacity, stores.states(), stores.newest()) == (0, [], None)
    with pytest.raises(NotFound, match="no OVF_STORE"):
        stores.begin()


@pytest.mark.parametrize("length", [
    pytest.param(0, id="empty"),
    pytest.param(1, id="one-byte"),
    pytest.param(3 * 512 + 1, id="unaligned"),
    pytest.param(CAPACITY, id="fills-store"),
])
def test_first_update(storage: StorageDomain, length: int) -> None:
    stores = open_stores(storage)
    data = bytes(range(256)) * (length // 256) + b"x" * (length % 256)
    u = stores.begin()
    assert (u.generation, u.target.index, u.volume.size()) == (1, 0, CAPACITY)
    marked = stores.states()[0]
    assert marked.record is not None and marked.record.updating
    assert (marked.valid, marked.record.generation) == (False, 1)
    assert "did not complete" in (marked.error or "")
    u.volume.write(0, memoryview(data))
    record = u.commit(len(data), digest(data))
    assert (record.generation, record.tar_length, record.digest, record.updating) == (
        1, length, digest(data), False)
    assert u.replica_errors == []
    states = stores.states()
    assert [s.valid for s in states] == [True, True]
    assert states[0].record == record
    assert states[0].to_json()["record"] == record.to_json()
    state, found = newest(stores)
    assert found == data and state.record is not None and state.record.generation == 1


def test_update_on_4k_sectors(tmp_path: Path, loop_device: LoopDeviceFactory) -> None:
    """Unaligned archives on a device that takes only 4096-byte direct I/O."""
    stores = open_stores(make_storage("block-4k", tmp_path, loop_device))
    for data in (b"odd" * 1001, bytes(range(256)) * 5000):
        update(stores, data)
        assert newest(stores)[1] == data


def test_newest_view_is_read_only(storage: StorageDomain) -> None:
    stores = open_stores(storage)
    update(stores, b"archive")
    found = stores.newest()
    assert found is not None
    with closing(found[1]) as vol:
        assert (vol.size(), vol.readonly) == (7, True)
        with pytest.raises(Forbidden):
            vol.write(0, memoryview(b"x"))
        with pytest.raises(OutOfRange):
            vol.readinto(8, memoryview(bytearray(1)))


def test_reader_picks_highest_valid_generation(storage: StorageDomain) -> None:
    stores = open_stores(storage, 3)
    a, b, c = stores.stores
    plant(a, b"five", 5)
    plant(b, b"seven", 7)
    plant(c, b"six", 6)
    state, data = newest(stores)
    assert (state.index, data) == (1, b"seven")


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "flipped-generation-bit": lambda rec: rec[:16] + bytes([rec[16] ^ 4]) + rec[17:],
    "flipped-checksum-bit": lambda rec: rec[:60] + bytes([rec[60] ^ 1]) + rec[61:],
    "torn-half-written": lambda rec: rec[:40] + bytes(len(rec) - 40),
    "garbage": lambda rec: bytes((i * 7 + 3) % 251 for i in range(len(rec))),
    "other-magic": lambda rec: b"SLUICEPV" + rec[8:],
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_torn_record_ignored(storage: StorageDomain, corrupt: Callable[[bytes], bytes]) -> None:
    stores = open_stores(storage)
    first, second = stores.stores
    plant(first, b"older", 1)
    plant(second, b"newer", 2)
    poke(second, CAPACITY, corrupt(peek(second, CAPACITY, RECORD_SIZE)))
    broken = stores.states()[1]
    assert (broken.record, broken.valid) == (None, False)
    assert broken.error in ("torn or corrupt commit record", "no commit record (unknown bytes)")
    assert newest(stores)[1] == b"older"


def test_tar_checksum_mismatch_ignored(storage: StorageDomain) -> None:
    stores = open_stores(storage)
    first, second = stores.stores
    plant(first, b"older", 1)
    plant(second, b"newer", 2)
    poke(second, 2, b"W")
    broken = stores.states()[1]
    assert broken.record is not None and broken.record.generation == 2
    assert (broken.valid, broken.error) == (False, "archive checksum mismatch")
    assert newest(stores)[1] == b"older"


def test_updating_record_never_chosen(storage: StorageDomain) -> None:
    stores = open_stores(storage)
    first, second = stores.stores
    plant(first, b"older", 1)
    plant(second, b"complete but marked", 9, updating=True)
    assert newest(stores)[1] == b"older"
    plant(first, b"older", 1, updating=True)
    assert stores.newest() is None


# oVirt's readers: dd | tar


def dd_tar(info: VolumeInfo, *tar_args: str, length: int | None = None) -> bytes:
    """``dd if=STORE | tar ...`` as hosted-engine runs it, on a file or a region."""
    count = info.size if length is None else length
    dd = ["dd", f"if={info.path}", "bs=4k", "iflag=skip_bytes,count_bytes",
          f"skip={info.offset}", f"count={count}", "status=none"]
    with subprocess.Popen(dd, stdout=subprocess.PIPE) as src:
        res = subprocess.run(["tar", *tar_args], stdin=src.stdout, capture_output=True,
                             check=True, timeout=30)
    return res.stdout


def test_dd_tar_reads_committed_store(storage: StorageDomain) -> None:
    stores = open_stores(storage)
    vm = new_id()
    ovf = b"<ovf:Envelope>" + b"x" * 5000 + b"</ovf:Envelope>"
    old = make_tar({"info.json": b"{}", f"{vm}.ovf": ovf,
                    "filler.ovf": bytes(range(256)) * 2400, "metadata.json": b"{}"})
    update(stores, old)
    new = make_tar({"info.json": b"{}", f"{vm}.ovf": ovf[:100]})
    update(stores, new)
    for info in stores.stores:
        assert dd_tar(info, "-xOf", "-", f"{vm}.ovf") == ovf[:100]
        assert dd_tar(info, "-tf", "-").split() == [b"info.json", f"{vm}.ovf".encode()]
        # The old archive's members right after the new one are zeroed away.
        assert len(old) < len(new) + MiB
        assert peek(info, len(new), MiB) == bytes(MiB)
        listed = dd_tar(info, "--ignore-zeros", "-tf", "-", length=len(new) + MiB)
        assert listed.split() == [b"info.json", f"{vm}.ovf".encode()]
