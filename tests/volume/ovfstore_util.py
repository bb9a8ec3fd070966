"""Helpers of the OVF store tests (test_ovfstore*.py and the crasher).

Stores are 4 MiB here (128 MiB in production) to keep the tests fast;
nothing in the format depends on the size.
"""

from __future__ import annotations

import uuid
from contextlib import closing
from pathlib import Path

import xxhash

from tests.conftest import LoopDeviceFactory
from tests.volume.test_blockdomain import write as poke
from volume import ovfrecord
from volume.base import Volume
from volume.blockdomain import create_block_domain
from volume.filedomain import create_file_domain
from volume.ovfstore import RECORD_SIZE, CommitRecord, OvfStores, StoreState, ensure_stores
from volume.ovfupdate import Update
from volume.sd import StorageDomain, VolumeInfo, open_data

MiB = 1 << 20
STORE = 4 * MiB
CAPACITY = STORE - RECORD_SIZE


def new_id() -> str:
    return str(uuid.uuid4())


def make_storage(kind: str, tmp_path: Path,
                 loop_device: LoopDeviceFactory | None = None) -> StorageDomain:
    """A new, empty domain: ``file``, or ``block`` on a 24 MiB loop device
    of 512-byte sectors (``block-4k``: 4096-byte sectors)."""
    if kind == "file":
        root = tmp_path / "sd"
        root.mkdir()
        return create_file_domain(str(root), new_id())
    assert loop_device is not None
    sector = 4096 if kind == "block-4k" else 512
    return create_block_domain([loop_device(24 * MiB, sector)], new_id())


def open_stores(storage: StorageDomain, count: int = 2) -> OvfStores:
    ensure_stores(storage, count, STORE)
    return OvfStores.open(storage)


def digest(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def read_all(vol: Volume) -> bytes:
    buf = bytearray(vol.size())
    assert vol.readinto(0, memoryview(buf)) == len(buf)
    return bytes(buf)


def update(stores: OvfStores, data: bytes) -> tuple[Update, CommitRecord]:
    u = stores.begin()
    u.volume.write(0, memoryview(data))
    return u, u.commit(len(data), digest(data))


def newest(stores: OvfStores) -> tuple[StoreState, bytes]:
    found = stores.newest()
    assert found is not None
    state, vol = found
    with closing(vol):
        return state, read_all(vol)


def plant(info: VolumeInfo, data: bytes, generation: int, updating: bool = False) -> None:
    """Put an archive and a record for it into a store, bypassing Update."""
    poke(info, 0, data)
    with closing(open_data(info)) as vol:
        ovfrecord.write(vol, info.size, CommitRecord(
            generation, len(data), digest(data), 1e9 + generation, updating))


def generations(stores: OvfStores) -> list[int | None]:
    """The valid generation of each store, None where invalid."""
    return [s.record.generation if s.valid and s.record else None for s in stores.states()]
