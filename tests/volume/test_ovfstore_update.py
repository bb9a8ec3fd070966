"""OVF store updates: which store is written when, failures, aborts, and
readers in the same daemon, on file and block domains."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import LoopDeviceFactory
from tests.volume.ovfstore_util import (
    CAPACITY,
    MiB,
    digest,
    generations,
    make_storage,
    newest,
    open_stores,
    plant,
    read_all,
    update,
)
from tests.volume.test_blockdomain import write as poke
from volume import ovfrecord, ovfstate, ovfstore, ovfupdate
from volume._ovfguard import guard, store_key
from volume.base import Volume
from volume.blockdomain import BlockDomain
from volume.errors import (
    ChecksumMismatch,
    Conflict,
    InvalidRequest,
    OutOfRange,
    StoreUnavailable,
    VolumeError,
)
from volume.ovfstore import RECORD_SIZE, OvfStores, StoreState
from volume.sd import StorageDomain, VolumeInfo, open_data


@pytest.fixture(params=["file", "block"])
def storage(request: pytest.FixtureRequest, tmp_path: Path,
            loop_device: LoopDeviceFactory) -> StorageDomain:
    return make_storage(request.param, tmp_path, loop_device)


def test_targets_follow_age(storage: StorageDomain) -> None:
    """The store updated longest ago is the target; an invalid one comes first."""
    stores = open_stores(storage)
    u, _ = update(stores, b"one")
    assert u.target.index == 0
    # Store 0 got generation 1 first and store 1 its copy afterwards, so
    # store 1 is the newest: it is held back and store 0 is written again.
    u, _ = update(stores, b"two")
    assert (u.generation, u.target.index) == (2, 0)
    poke(stores.stores[1], CAPACITY, bytes(RECORD_SIZE))  # store 1 loses its record
    u, _ = update(stores, b"three")
    assert (u.generation, u.target.index) == (3, 1)
    plant(stores.stores[0], b"old", 1, updating=True)
    u, _ = update(stores, b"four")
    assert (u.generation, u.target.index) == (4, 0)
    assert generations(stores) == [4, 4]


def committed_at(state: StoreState) -> float:
    assert state.record is not None
    return state.record.committed_at


def test_copies_newest_last(storage: StorageDomain, monkeypatch: pytest.MonkeyPatch) -> None:
    """Copies go oldest first and the previously newest store last: failing
    the last one leaves the previous generation in exactly that store."""
    stores = open_stores(storage, 3)
    update(stores, b"gen one")
    before = sorted(stores.states(), key=committed_at)
    assert [s.valid for s in before] == [True] * 3
    opened: list[str] = []

    def open_failing_last(info: VolumeInfo, readonly: bool = False) -> Volume:
        opened.append(info.vol_uuid)
        if len(opened) == 3:
            raise VolumeError("injected: storage error during open volume")
        return open_data(info, readonly)

    monkeypatch.setattr(ovfupdate, "open_data", open_failing_last)
    u, record = update(stores, b"gen two")
    assert opened == [s.volume.vol_uuid for s in before]
    newest_before = before[-1]
    assert len(u.replica_errors) == 1 and "injected" in u.replica_errors[0]
    assert f"store {newest_before.index}" in u.replica_errors[0]
    gens = generations(stores)
    assert gens[newest_before.index] == 1
    assert sorted(g for g in gens if g is not None) == [1, 2, 2]
    state, data = newest(stores)
    assert state.record is not None and data == b"gen two"
    assert (state.record.generation, state.record.digest) == (record.generation, record.digest)


def test_tar_too_large(storage: StorageDomain) -> None:
    stores = open_stores(storage)
    u = stores.begin()
    with pytest.raises(OutOfRange):
        u.volume.write(CAPACITY - 10, memoryview(bytes(20)))
    with pytest.raises(OutOfRange):
        u.volume.zero(CAPACITY, 1)
    with pytest.raises(InvalidRequest, match="archive length"):
        u.commit(CAPACITY + 1, digest(b""))
    record = stores.states()[0].record
    assert record is not None and record.updating  # the record area is intact
    with pytest.raises(Conflict, match="ended"):
        u.commit(0, digest(b""))


def test_wrong_digest_commits_nothing(storage: StorageDomain) -> None:
    stores = open_stores(storage)
    update(stores, b"good")
    u = stores.begin()
    u.volume.write(0, memoryview(b"evil"))
    with pytest.raises(ChecksumMismatch):
        u.commit(4, digest(b"good"))
    assert generations(stores) == [None, 1]
    assert newest(stores)[1] == b"good"
    for late in (lambda: u.volume.write(0, memoryview(b"more")), u.volume.flush,
                 lambda: u.volume.zero(0, 1), lambda: u.commit(4, digest(b"evil"))):
        with pytest.raises(Conflict, match="ended"):
            late()
    u.abort()
    u2, _ = update(stores, b"next")
    assert (u2.generation, u2.target.index) == (2, 0)  # nothing was committed as 2


def test_malformed_digest_refused(storage: StorageDomain) -> None:
    stores = open_stores(storage)
    u = stores.begin()
    with pytest.raises(InvalidRequest, match="digest"):
        u.commit(0, "xyz")
    assert generations(stores) == [None, None]


def test_abort(storage: StorageDomain) -> None:
    stores = open_stores(storage)
    update(stores, b"kept")
    u = stores.begin()
    u.volume.write(0, memoryview(b"half"))
    u.abort()
    u.abort()
    assert generations(stores) == [None, 1]
    with pytest.raises(RuntimeError), stores.begin() as u2:
        u2.volume.write(0, memoryview(b"half again"))
        raise RuntimeError("the stream broke")
    assert newest(stores)[1] == b"kept"
    assert update(stores, b"after")[1].generation == 2


def test_a_single_stores_generation_goes_on_after_a_cut_off_update(
        storage: StorageDomain) -> None:
    """A domain's only store, marked updating by an update that was cut
    off, no longer holds its committed record: the next update was given
    generation 1 again, a number an archive had already had."""
    stores = open_stores(storage, count=1)
    update(stores, b"one")
    update(stores, b"two")
    u = stores.begin()
    assert u.generation == 3
    u.abort()
    assert generations(stores) == [None]
    assert update(stores, b"three")[1].generation == 3


def test_one_update_at_a_time(storage: StorageDomain) -> None:
    stores = open_stores(storage)
    u = stores.begin()
    with pytest.raises(Conflict, match="being updated"):
        OvfStores.open(storage).begin()
    u.abort()
    update(OvfStores.open(storage), b"fine")


def test_a_slow_reader_is_cut_off_not_the_copy(storage: StorageDomain,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """An update gives a reader of the store it is to copy into a grace to
    finish, then cuts it off: the copy goes on, and the reader's next read
    fails rather than returning bytes of the new archive."""
    monkeypatch.setattr(ovfupdate, "READ_GRACE", 0.1)
    stores = open_stores(storage)
    update(stores, b"one")
    found = stores.newest()
    assert found is not None
    state, view = found
    with closing(view):
        buf = memoryview(bytearray(3))
        assert view.readinto(0, buf) == 3 and bytes(buf) == b"one"
        u, _ = update(stores, b"two")
        assert u.target.index != state.index
        assert u.replica_errors == []
        with pytest.raises(Conflict, match="being replaced by a newer archive"):
            view.readinto(0, buf)
    assert generations(stores) == [2, 2]
    assert newest(stores)[1] == b"two"


def test_a_reader_within_the_grace_is_waited_for(storage: StorageDomain) -> None:
    """A reader that finishes within the grace reads its whole archive, and
    the copy into its store waits for it and then succeeds."""
    stores = open_stores(storage)
    update(stores, b"one")
    found = stores.newest()
    assert found is not None
    _, view = found
    read: list[bytes] = []

    def finish_soon() -> None:
        time.sleep(0.5)
        read.append(read_all(view))
        view.close()
    reader = threading.Thread(target=finish_soon)
    reader.start()
    u, _ = update(stores, b"two")
    reader.join()
    assert read == [b"one"]
    assert u.replica_errors == []
    assert generations(stores) == [2, 2]


def test_a_read_that_never_returns_leaves_the_store(
        storage: StorageDomain, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read hung in the storage when the grace ends: the copy into that
    store gives up after READ_WAIT, and the store keeps its archive."""
    monkeypatch.setattr(ovfupdate, "READ_GRACE", 0.1)
    monkeypatch.setattr(ovfupdate, "READ_WAIT", 0.2)
    stores = open_stores(storage)
    update(stores, b"one")
    state = max(stores.states(), key=ovfstate.age)
    domain = guard(storage.uuid)
    hold = domain.add_reader(store_key(state.volume))
    assert hold is not None
    try:
        with domain.reading(hold):  # as a read stuck in the kernel
            u, _ = update(stores, b"two")
            assert len(u.replica_errors) == 1, u.replica_errors
            assert "a read has not returned for 0 s" in u.replica_errors[0]
    finally:
        domain.remove_reader(hold)
    assert generations(stores)[state.index] == 1
    assert newest(stores)[1] == b"two"


def test_readers_during_updates_see_whole_archives(storage: StorageDomain) -> None:
    """Readers in other threads never get bytes of an archive being written,
    and never find no store while the stores are being updated."""
    stores = open_stores(storage)
    update(stores, b"first")
    done = threading.Event()
    seen: list[int] = []
    failures: list[BaseException] = []

    def read_loop() -> None:
        try:
            while not done.is_set():
                found = stores.newest()
                assert found is not None
                state, view = found
                with closing(view):
                    data = read_all(view)
                assert state.record is not None
                assert digest(data) == state.record.digest
                seen.append(state.record.generation)
        except BaseException as e:
            failures.append(e)

    readers = [threading.Thread(target=read_loop) for _ in range(3)]
    for t in readers:
        t.start()
    rng = random.Random(0)
    try:
        for _ in range(8):
            u, _ = update(stores, rng.randbytes(rng.randrange(MiB)))
            assert u.replica_errors == []
            time.sleep(0.01)  # let the readers see this generation
    finally:
        done.set()
        for t in readers:
            t.join()
    assert failures == []
    assert len(set(seen)) > 2




def test_seal_answers_before_the_copies(storage: StorageDomain) -> None:
    """seal() commits the target alone; replicate() reads it back before it
    touches another store, and copies nothing if it does not match."""
    stores = open_stores(storage)
    update(stores, b"gen one")
    u = stores.begin()
    u.volume.write(0, memoryview(b"gen two"))
    record = u.seal(7, digest(b"gen two"), read_back=False)
    assert record.generation == 2
    with pytest.raises(Conflict, match="being updated"):
        stores.begin()  # the update lasts until the copies are done
    poke(u.target.volume, 0, b"gen 2wo")  # the target rots before they start
    u.replicate()
    assert len(u.replica_errors) == 1 and "reads back with" in u.replica_errors[0]
    gens = generations(stores)
    assert gens[u.target.index] is None and gens[1 - u.target.index] == 1
    state, data = newest(stores)
    assert data == b"gen one" and state.record is not None and state.record.generation == 1
    with pytest.raises(Conflict, match="ended"):
        u.replicate()
    u2, _ = update(stores, b"gen three")  # and the next update goes on
    assert newest(stores)[1] == b"gen three" and u2.replica_errors == []


def test_begin_trusts_only_what_it_read_back(storage: StorageDomain,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """begin() does not hash again the stores this process wrote or read back
    under the same record to choose the target; the one that is to stay the
    good copy only if read back within CONFIRM_TRUST seconds; a record
    changed elsewhere is read again."""
    stores = open_stores(storage)
    update(stores, b"gen one")
    hashed: list[int] = []
    real = ovfrecord.tar_digest

    def counting(vol: Volume, length: int, buf: memoryview,
                 observe: Callable[[memoryview], None] | None = None) -> str:
        hashed.append(length)
        return real(vol, length, buf, observe)

    monkeypatch.setattr(ovfstate, "tar_digest", counting)
    u = stores.begin()
    assert hashed == []  # all read back moments ago
    u.abort()
    update(stores, b"gen two")
    hashed.clear()
    monkeypatch.setattr(ovfstore, "CONFIRM_TRUST", 0.0)  # as if a minute had passed
    u = stores.begin()
    assert hashed == [len(b"gen two")]  # the copy that stays, not the target
    hashed.clear()
    u.abort()
    other = stores.stores[1 - u.target.index]
    plant(other, b"another host's", 5)  # another host's update: a new record
    u = stores.begin()
    assert hashed == [len(b"another host's")]
    assert u.generation == 6 and u.target.volume != other  # the aborted one again
    u.abort()
    assert len(stores.states()) == 2 and len(hashed) == 2  # readers always hash


def test_a_store_rotten_since_its_check_is_not_kept_as_the_good_one(
        storage: StorageDomain, monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy that stays when the target is overwritten was trusted from
    its last check: rotten since, it made a failed update leave no valid
    store, the good one overwritten.  A file written since is never
    trusted; a block device shows no writes, so there the check must be
    older than CONFIRM_TRUST."""
    if isinstance(storage, BlockDomain):
        monkeypatch.setattr(ovfstore, "CONFIRM_TRUST", 0.0)
    stores = open_stores(storage)
    update(stores, b"gen one" * 100)
    newest_state, _ = newest(stores)
    poke(newest_state.volume, 10, b"X")  # one byte of the newest copy rots
    u = stores.begin()
    assert u.target.volume == newest_state.volume  # the rotten one is overwritten
    u.abort()  # the update fails (a refused stream)
    state, data = newest(stores)
    assert data == b"gen one" * 100 and state.volume != newest_state.volume


def test_a_store_that_cannot_be_opened_is_passed_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store whose file is gone made every update fail with 404 'no such
    volume'.  It is passed over while another valid store stays; with two
    stores the last valid one is never the target (503, nothing written)."""
    storage = make_storage("file", tmp_path)
    stores = open_stores(storage, count=3)
    update(stores, b"gen one")
    states = sorted(stores.states(), key=ovfstate.age)
    gone = states[0].volume
    Path(gone.path).unlink()
    u = stores.begin()
    # Passing over the first target did not end the domain's update.
    with pytest.raises(Conflict, match="being updated"):
        OvfStores.open(storage).begin()
    u.volume.write(0, memoryview(b"gen two"))
    u.commit(len(b"gen two"), digest(b"gen two"))
    assert u.target.volume != gone
    assert newest(stores)[1] == b"gen two"
    assert u.replica_errors  # the copy into the missing store failed, said so

    (tmp_path / "two").mkdir()
    stores = open_stores(make_storage("file", tmp_path / "two"))
    update(stores, b"gen one")
    gone = stores.states()[0].volume
    Path(gone.path).unlink()
    with pytest.raises(StoreUnavailable, match="risking the last valid one"):
        stores.begin()
    assert newest(stores)[1] == b"gen one"


def test_a_store_written_while_it_is_hashed_is_not_trusted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file's signature was taken after its hash: a write by another
    process into what the hash had passed was taken into the trusted
    signature, and the rotten copy was kept as the good one."""
    storage = make_storage("file", tmp_path)
    stores = open_stores(storage)
    update(stores, b"gen one" * 100)
    newest_state, _ = newest(stores)
    real = ovfrecord.tar_digest
    calls: list[int] = []

    def hash_then_rot(vol: Volume, length: int, buf: memoryview,
                      observe: Callable[[memoryview], None] | None = None) -> str:
        found = real(vol, length, buf, observe)
        if len(calls) == newest_state.index:  # the newest store, just hashed
            poke(newest_state.volume, 10, b"X")
        calls.append(length)
        return found

    monkeypatch.setattr(ovfstate, "tar_digest", hash_then_rot)
    assert all(s.valid for s in stores.states())  # a reader, while it rots
    monkeypatch.setattr(ovfstate, "tar_digest", real)
    u = stores.begin()
    assert u.target.volume == newest_state.volume  # hashed again: the rotten one goes
    u.abort()
    state, data = newest(stores)
    assert data == b"gen one" * 100 and state.volume != newest_state.volume
