"""The reader's one-loop path for OVFs without a manifest to check them
against: stores as an unchanged oVirt engine writes them, and any store
read with ``entries_only`` (counting a stored archive's entries without
parsing its JSON).  It must read, and refuse, exactly as the steps do."""

from __future__ import annotations

import uuid

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from stream.wire.manifest import INFO_NAME, METADATA_NAME, build_info, build_metadata
from stream.wire.storetar import StoreTar
from stream.wire.tarheader import RawHeader
from stream.wire.tarplan import Member, plan, render
from stream.wire.tarread import BadTar, OvfTarReader

from .test_tar_fuzz import SD, Damage, damages, fuzz, mtimes, outcome, read, sizes, uuids

INFO = build_info("Wed Jul 01 11:43:07 UTC 2020", [SD], None)


@st.composite
def plain_stores(draw: st.DrawFn) -> bytes:
    """info.json without a manifest, OVFs, metadata.json, more OVFs (§1.5)."""
    ids = draw(st.lists(uuids, max_size=6, unique=True))
    mtime = draw(mtimes)
    ovfs = [Member(f"{u}.ovf", s, mtime, (b"<ovf/>" * s)[:s])
            for u, s in ((u, draw(sizes)) for u in ids)]
    meta = build_metadata({})
    members = [Member(INFO_NAME, len(INFO), mtime, INFO), *ovfs]
    members.insert(draw(st.integers(1, len(members))),
                   Member(METADATA_NAME, len(meta), mtime, meta))
    return b"".join(render(plan(members), lambda m, start, n: m.source[start : start + n]))


@st.composite
def damaged_plain_stores(draw: st.DrawFn) -> bytes:
    blob = bytearray(draw(plain_stores()))
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(blob) - 1))
        blob[at] = draw(st.integers(0, 255))
    return bytes(blob)


def agree(blob: bytes, entries_only: bool = False) -> None:
    # 500-byte chunks split every header: the steps read all of them.
    whole = outcome(blob, entries_only=entries_only)
    assert whole == outcome(blob, list(range(500, len(blob), 500)), entries_only=entries_only)


@fuzz(100)
@given(damaged_plain_stores())
def test_fast_path_and_steps_agree_without_a_manifest(blob: bytes) -> None:
    agree(blob)
    agree(blob, entries_only=True)


@fuzz(60)
@given(damages())
def test_fast_path_and_steps_agree_counting_entries_only(damage: Damage) -> None:
    for blob in (damage.store.blob, damage.blob):
        agree(blob, entries_only=True)


@fuzz(40)
@given(st.data())
def test_entries_only_reads_the_same_entries(data: st.DataObject) -> None:
    blob = data.draw(plain_stores())
    full = read(blob)
    counted = read(blob, entries_only=True)
    assert counted.entries == full.entries and counted.digest == full.digest
    assert (counted.info, counted.manifest, counted.vm_status) == ({}, None, {})


def test_entries_only_neither_parses_nor_checks_the_json() -> None:
    """A manifest is not checked, nor the JSON parsed: the census of a stored
    archive, which its record verified, counts its headers only."""
    ovf = b"<ovf/>" * 100
    listed = [(str(uuid.uuid4()), len(ovf), xxhash.xxh3_128_hexdigest(b"other"))]
    tar = StoreTar("x", SD, listed, {}, 0)
    blob = b"".join(ovf if isinstance(p, int) else p for p in tar.pieces())
    with pytest.raises(BadTar, match="the manifest says"):
        read(blob)
    assert [e.name for e in read(blob, entries_only=True).entries] == [
        INFO_NAME, f"{listed[0][0]}.ovf", METADATA_NAME]


class Counting(OvfTarReader):
    """Counts the entries the general steps start."""

    stepped = 0

    def _start_entry(self, raw: RawHeader, offset: int) -> None:
        self.stepped += 1
        super()._start_entry(raw, offset)


@pytest.mark.parametrize("entries_only", [True, False])
def test_a_large_store_without_manifest_takes_the_one_loop_path(entries_only: bool) -> None:
    """2,000 OVFs counted without their manifest, or read without one: only
    the JSON entries go through the steps (the OVFs made 1.2 s, not 0.5 s,
    of counting 100,000)."""
    ovf = b"<ovf/>" * 100
    ovfs = [(str(uuid.uuid4()), len(ovf), xxhash.xxh3_128_hexdigest(ovf)) for _ in range(2000)]
    if entries_only:
        tar = StoreTar("x", SD, ovfs, {}, 0)
        blob = b"".join(ovf if isinstance(p, int) else p for p in tar.pieces())
    else:
        members = [Member(INFO_NAME, len(INFO), 0, INFO),
                   *(Member(f"{u}.ovf", len(ovf), 0, ovf) for u, _, _ in ovfs)]
        blob = b"".join(render(plan(members), lambda m, start, n: m.source[start : start + n]))
    reader = Counting(max_total=len(blob), entries_only=entries_only)
    reader.feed(blob)
    assert len(reader.finish().entries) == len(ovfs) + 1 + entries_only
    assert reader.stepped == 1 + entries_only
