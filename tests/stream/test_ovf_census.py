"""``ovf-store/info`` counts each store's entries from their headers: it
parsed info.json again for every store at every call, and a 16 MiB one of
tiny values, committed before the reader refused those, took the daemon
from 99 to 787 MiB at each call."""

from __future__ import annotations

import tarfile
import tracemalloc
from pathlib import Path

import pytest

from stream import ovfread
from stream.wire.tarread import BadTar, OvfTarReader
from tests.volume.ovfstore_util import CAPACITY, make_storage, open_stores, plant

from .test_ovf import build_tar
from .test_ovf_pax import with_base256_checksum, with_pax
from .wire.test_tarpax import NAME, OVF

MiB = 1 << 20


def member(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info.tobuf(format=tarfile.USTAR_FORMAT) + data + bytes(-len(data) % 512)


def tiny_values_store(size: int) -> bytes:
    head = b'{"Last Updated": "x", "Storage Domains": [], "x": ['
    info = (head + b"[]," * ((size - len(head)) // 3))[:-1] + b"]}"
    return member("info.json", info) + member("metadata.json", b'{"VM Status": {}}') \
        + bytes(1024)


def test_info_counts_headers_and_parses_no_json(tmp_path: Path) -> None:
    storage = make_storage("file", tmp_path)
    stores = open_stores(storage)
    try:
        old, new = stores.stores
        junk = tiny_values_store(CAPACITY - 4096)  # 1.3 million values
        plant(old, junk, 1)
        tar, _ = build_tar(storage.uuid, count=3)
        plant(new, tar, 2)
    finally:
        stores.close()
    tracemalloc.start()
    try:
        found = {s["vol_uuid"]: s for s in ovfread.states(storage)}
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (found[old.vol_uuid]["entries"], found[old.vol_uuid]["ovfs"]) == (2, 0)
    assert (found[new.vol_uuid]["entries"], found[new.vol_uuid]["ovfs"]) == (5, 3)
    # Neither info.json kept nor parsed: parsing the junk took 80 MiB, and
    # keeping it 8 MiB (its data and a copy).
    assert peak < 2 * MiB, peak


def test_a_store_committed_under_older_rules_is_still_counted_and_read(
        tmp_path: Path) -> None:
    """Stores an older daemon committed with PAX records or a checksum form
    uploads are refused now were listed with ovfs: null, so an engine took
    them for unknown, and a single OVF of them could not be read."""
    storage = make_storage("file", tmp_path)
    stores = open_stores(storage)
    try:
        old, new = stores.stores
        plant(old, with_pax(b"SCHILY.xattr.user.origin", b"x"), 1)
        plant(new, with_base256_checksum(), 2)
    finally:
        stores.close()
    found = {s["vol_uuid"]: s for s in ovfread.states(storage)}
    for store in (old, new):
        state = found[store.vol_uuid]
        assert state["valid"] and (state["entries"], state["ovfs"]) == (2, 1), state
    assert ovfread.read_member(storage, NAME) == OVF
    with pytest.raises(BadTar, match="not allowed"):  # an upload of it is refused
        index_upload(with_pax(b"SCHILY.xattr.user.origin", b"x"))


def index_upload(data: bytes) -> None:
    reader = OvfTarReader(max_total=len(data))
    reader.feed(data)
