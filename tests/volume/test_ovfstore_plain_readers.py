"""Readers that know no commit record, like hosted-engine's
``dd if=STORE | tar -xOf - <vm>.ovf``, never extract from a store that is
being written or was cut off: its first block stays zeros until the rest
of the archive is synced, and tar reads that as an empty archive."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import LoopDeviceFactory
from tests.volume.ovfstore_crasher import make_tar
from tests.volume.ovfstore_util import CAPACITY, digest, make_storage, open_stores, read_all
from volume import ovfarea, ovfrecord, ovfupdate
from volume.base import Volume
from volume.errors import ChecksumMismatch, VolumeError
from volume.ovfarea import HEAD
from volume.sd import StorageDomain, VolumeInfo, open_data


@pytest.fixture(params=["file", "block"])
def storage(request: pytest.FixtureRequest, tmp_path: Path,
            loop_device: LoopDeviceFactory) -> StorageDomain:
    return make_storage(request.param, tmp_path, loop_device)


def raw(info: VolumeInfo) -> bytes:
    """The store's archive area as dd reads it."""
    with closing(open_data(info, True)) as vol:
        return read_all(vol)[:CAPACITY]


def extract(store: bytes, name: str) -> bytes | None:
    """GNU tar's ``tar -xOf - name`` of the bytes; None when it fails."""
    done = subprocess.run(["tar", "-xOf", "-", name], input=store, capture_output=True,
                          check=False)
    return done.stdout if done.returncode == 0 else None


OLD_DATA = b"<old/>\n" * 20000
NEW_DATA = b"<new>" + b"x" * 200000 + b"</new>\n"
OLD = make_tar({"vm.ovf": OLD_DATA})
NEW = make_tar({"vm.ovf": NEW_DATA})


def test_a_store_being_written_is_no_archive_to_tar(storage: StorageDomain) -> None:
    stores = open_stores(storage, 1)  # the one store is always the target
    u = stores.begin()
    u.volume.write(0, memoryview(OLD))
    u.commit(len(OLD), digest(OLD))
    (state,) = stores.states()
    assert extract(raw(state.volume), "vm.ovf") == b"<old/>\n" * 20000

    u = stores.begin()
    assert raw(state.volume)[:HEAD] == bytes(HEAD)  # before the first byte arrives
    half = len(NEW) // 2
    u.volume.write(0, memoryview(NEW)[:half])
    seen = raw(state.volume)
    assert seen[:HEAD] == bytes(HEAD) and seen[HEAD:half] == NEW[HEAD:half]
    assert extract(seen, "vm.ovf") is None  # not a torn OVF: nothing at all
    back = bytearray(half)  # the update's own view has every byte it was given
    assert u.volume.readinto(0, memoryview(back)) == half and back == NEW[:half]
    u.volume.write(half, memoryview(NEW)[half:])
    u.commit(len(NEW), digest(NEW))
    assert extract(raw(state.volume), "vm.ovf") == b"<new>" + b"x" * 200000 + b"</new>\n"


def test_a_copy_cut_off_is_no_archive_to_tar(storage: StorageDomain,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    stores = open_stores(storage, 2)
    for data in (OLD, OLD):  # both stores hold OLD
        u = stores.begin()
        u.volume.write(0, memoryview(data))
        u.commit(len(data), digest(data))
    def cut_off(vol: Volume, length: int, buf: memoryview) -> Iterator[memoryview]:
        for i, chunk in enumerate(ovfrecord.chunks(vol, length, buf)):
            if i == 1:
                raise VolumeError("injected: storage error in the middle of a copy")
            yield chunk

    monkeypatch.setattr(ovfupdate, "CHUNK", 64 << 10)
    monkeypatch.setattr(ovfupdate, "chunks", cut_off)
    u = stores.begin()
    u.volume.write(0, memoryview(NEW))
    u.commit(len(NEW), digest(NEW))
    assert len(u.replica_errors) == 1 and "injected" in u.replica_errors[0]
    found = {extract(raw(s.volume), "vm.ovf") for s in stores.states()}
    assert found == {None, b"<new>" + b"x" * 200000 + b"</new>\n"}


def test_target_failing_its_check_is_no_archive_to_tar(storage: StorageDomain) -> None:
    """Half the archive written, sealed with the whole one's length and digest:
    the check refuses it, and the store must be what abort leaves."""
    stores = open_stores(storage, 1)
    u = stores.begin()
    u.volume.write(0, memoryview(OLD))
    u.commit(len(OLD), digest(OLD))
    (state,) = stores.states()

    u = stores.begin()
    u.volume.write(0, memoryview(NEW)[:len(NEW) // 2])  # the rest never arrives
    with pytest.raises(ChecksumMismatch):
        u.commit(len(NEW), digest(NEW))
    (after,) = stores.states()
    assert after.record is not None and after.record.updating
    seen = raw(state.volume)
    torn = extract(seen, "vm.ovf")
    assert torn is None, (f"tar extracts {len(torn)} bytes, a torn OVF (new start, "
                          f"old middle: {b'<old/>' in torn}) from a store that failed its check")
    assert seen[:HEAD] == bytes(HEAD)


def test_copy_failing_its_check_is_no_archive_to_tar(storage: StorageDomain,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A write into the copy that the storage acknowledged and lost: the
    copy's read-back check catches it, and the copy must be no archive."""
    stores = open_stores(storage, 2)
    for data in (OLD, OLD):
        u = stores.begin()
        u.volume.write(0, memoryview(data))
        u.commit(len(data), digest(data))

    class LossyArea(ovfarea.StoreArea):
        def write(self, offset: int, buf: memoryview) -> None:
            if offset == 64 << 10:  # the copy's second chunk: lost
                return
            super().write(offset, buf)

    monkeypatch.setattr(ovfupdate, "CHUNK", 64 << 10)
    monkeypatch.setattr(ovfupdate, "StoreArea", LossyArea)
    u = stores.begin()
    u.volume.write(0, memoryview(NEW))  # one write at 0: nothing lost in the target
    u.commit(len(NEW), digest(NEW))
    assert len(u.replica_errors) == 1 and "xxh3_128" in u.replica_errors[0]
    copy = next(s for s in stores.states() if s.index != u.target.index)
    assert copy.record is not None and copy.record.updating
    torn = extract(raw(copy.volume), "vm.ovf")
    assert torn is None, (f"tar extracts {len(torn)} bytes, a torn OVF "
                          f"(== new: {torn == NEW_DATA}) from a copy that failed its check")
