"""Property and adversarial tests of the OVF tar formats: the planner's
archives are read back whole by the reader in any chunking (and by
``tarfile``), and a damaged archive is refused with ``BadTar`` and nothing
else.  Examples are derandomized so CI is deterministic; set ``SLUICE_FUZZ``
(see below) to search longer."""

from __future__ import annotations

import io
import itertools
import os
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.wire.manifest import (
    INFO_NAME,
    METADATA_NAME,
    BadManifest,
    Manifest,
    ManifestEntry,
    build_info,
    build_metadata,
    parse_info,
)
from stream.wire.storetar import StoreTar
from stream.wire.tarheader import BLOCK, name_problem
from stream.wire.tarplan import Header, Member, ovf_store_plan, plan, render
from stream.wire.tarread import BadTar, OvfTarReader, Summary
from stream.wire.tarstream import TarStream

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

SD = "b7c6d2c4-8c3a-4d5e-9f10-1a2b3c4d5e6f"
EOF = bytes(2 * BLOCK)
OVF = b"<ovf:Envelope>...</ovf:Envelope>\n" * 20
INFO = build_info("Wed Jul 01 11:43:07 UTC 2020", [SD], None)


#: SLUICE_FUZZ=50 runs 50 times the examples, with random seeds, to search longer.
_SCALE = int(os.environ.get("SLUICE_FUZZ", "0"))


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples * (_SCALE or 1), deadline=None,
                    derandomize=not _SCALE, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def xxh(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def ovf() -> str:
    return f"{uuid.uuid4()}.ovf"


# Building archives.

uuids = st.uuids().map(str)
#: Sizes around block boundaries, where padding and the fast path's bounds change.
sizes = st.one_of(st.sampled_from([1, 2, 511, 512, 513, 1023, 1024, 1025, 4096]),
                  st.integers(1, 3000))
#: Small mtimes give one ustar block; the others a PAX header in front of it.
mtimes = st.sampled_from([0, 1_593_603_787, 8**11 - 1, 8**11, -1])


class Store:
    """A planned OVF_STORE tar, its OVFs by entry name, its VM statuses, and
    where its extended (PAX) header bodies are.  Shown short in failures."""

    def __init__(self, blob: bytes, ovfs: dict[str, bytes], status: dict[str, int],
                 extended: tuple[range, ...]) -> None:
        self.blob, self.ovfs, self.status, self.extended = blob, ovfs, status, extended

    def __repr__(self) -> str:
        sizes = [len(d) for d in self.ovfs.values()]
        return f"Store({len(self.blob)} bytes, OVF sizes {sizes}, extended {self.extended})"


@st.composite
def stores(draw: st.DrawFn, max_ovfs: int = 8) -> Store:
    ids = draw(st.lists(uuids, max_size=max_ovfs, unique=True))
    ovfs = {}
    for i, u in enumerate(ids):
        size = draw(sizes)
        ovfs[f"{u}.ovf"] = (bytes([i % 250 + 1]) + b"<ovf/>" * size)[:size]
    status = {u: draw(st.integers(0, 16)) for u in draw(st.lists(st.sampled_from(ids), unique=True)
                                                        if ids else st.just([]))}
    mtime = draw(mtimes)
    entries = [(n[:-4], len(d), xxh(d), d) for n, d in ovfs.items()]
    p, _, _, _ = ovf_store_plan("Wed Jul 01 11:43:07 UTC 2020", SD, entries, status, mtime)
    blob = b"".join(render(p, lambda m, start, n: m.source[start : start + n]))
    assert p.total_size == len(blob)
    # StoreTar streams the same bytes.
    tar = StoreTar("Wed Jul 01 11:43:07 UTC 2020", SD, [e[:3] for e in entries], status, mtime)
    streamed = [entries[i][3] if isinstance(i, int) else i for i in tar.pieces()]
    assert b"".join(streamed) == blob and tar.total_size == len(blob)
    extended = tuple(range(h.offset + BLOCK, h.offset + h.length - BLOCK)
                     for h in p.segments if isinstance(h, Header) and h.length > BLOCK)
    return Store(blob, ovfs, status, extended)


@st.composite
def splits(draw: st.DrawFn, length: int) -> list[int]:
    """Chunk boundaries: none, every byte, or random cuts."""
    kind = draw(st.sampled_from(["whole", "bytes", "random", "step"]))
    if kind == "whole":
        return []
    if kind == "bytes":
        return list(range(1, length))
    if kind == "step":
        step = draw(st.sampled_from([7, 100, 511, 513, 1000]))
        return list(range(step, length, step))
    return sorted(set(draw(st.lists(st.integers(1, max(length - 1, 1)), max_size=40))))


def pieces(blob: bytes, cuts: list[int]) -> list[memoryview]:
    view = memoryview(blob)
    bounds = [0, *cuts, len(blob)]
    return [view[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def read(blob: bytes, cuts: list[int] | None = None, **limits: Any) -> Summary:
    reader = OvfTarReader(**{"max_total": len(blob), **limits})
    for chunk in pieces(blob, cuts or []):
        reader.feed(chunk)
    return reader.finish()


def outcome(blob: bytes, cuts: list[int] | None = None, **limits: Any) -> Summary | str:
    """The summary, or the refusal's message; any other exception propagates."""
    try:
        return read(blob, cuts, **limits)
    except BadTar as e:
        assert e.http_status == 422
        return str(e)


def tar_members(blob: bytes) -> list[tuple[str, int, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        out = []
        for m in tf.getmembers():
            f = tf.extractfile(m)
            out.append((m.name, m.size, f.read() if f is not None else b""))
        return out


def member(name: str, data: bytes = b"", fmt: int = tarfile.PAX_FORMAT, **attrs: Any) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    return (info.tobuf(format=fmt, encoding="utf-8", errors="surrogateescape")  # type: ignore[arg-type]
            + data + bytes(-len(data) % BLOCK))


def resum(header: bytes | bytearray) -> bytes:
    """``header`` with its checksum made right again."""
    h = bytearray(header[:BLOCK])
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h) + bytes(header[BLOCK:])


def patched(header: bytes, start: int, value: bytes) -> bytes:
    h = bytearray(header)
    h[start : start + len(value)] = value
    return resum(h)


def after_info(*members: bytes) -> bytes:
    return member(INFO_NAME, INFO) + b"".join(members) + EOF


# (a) The planner's archives are accepted whole, in any chunking.

@fuzz(60)
@given(st.data())
def test_planned_store_is_read_back_in_any_chunking(data: st.DataObject) -> None:
    store = data.draw(stores())
    blob, ovfs, status = store.blob, store.ovfs, store.status
    s = read(blob, data.draw(splits(len(blob))))
    assert s == read(blob)
    assert s.tar_length == len(blob) and s.digest == xxh(blob)
    assert [e.name for e in s.entries] == [INFO_NAME, *ovfs, METADATA_NAME]
    for e in s.entries:
        assert xxh(blob[e.offset : e.offset + e.size]) == e.digest
        if e.name in ovfs:
            assert blob[e.offset : e.offset + e.size] == ovfs[e.name]
    assert s.vm_status == status
    assert s.manifest is not None and [e.name for e in s.manifest.entries] == [*ovfs, METADATA_NAME]
    by_name = {e.name: e for e in s.entries}
    assert [(n, size) for n, size, _ in tar_members(blob)] == [
        (e.name, e.size) for e in s.entries]
    for name, _, content in tar_members(blob):
        assert xxh(content) == by_name[name].digest


#: Flat names the layout-free planner allows: short, long, non-ASCII.
flat_names = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="/\\"), min_size=1, max_size=120),
    st.text("abcdefghij0123456789.-_", min_size=90, max_size=255),
).filter(lambda n: name_problem(n) is None)


@fuzz(60)
@given(st.data())
def test_planned_tar_is_read_back_by_the_stream_and_tarfile(data: st.DataObject) -> None:
    """Any flat names and sizes (PAX and GNU long names, PAX sizes), any chunking."""
    fmt = data.draw(st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]))
    names = data.draw(st.lists(flat_names, max_size=6, unique=True))
    members = [Member(n, data.draw(st.integers(0, 1100)), data.draw(mtimes), None) for n in names]
    members = [Member(m.name, m.size, m.mtime, bytes([i + 1]) * m.size)
               for i, m in enumerate(members)]
    p = plan(members, fmt)
    blob = b"".join(render(p, lambda m, start, n: m.source[start : start + n]))
    stream = TarStream(max_total=len(blob), max_entries=100, max_pax=64 << 10,
                       ignore_trailing=False)
    for chunk in pieces(blob, data.draw(splits(len(blob)))):
        stream.feed(chunk)
    assert stream.check_complete() == (len(blob), xxh(blob))
    assert [(e.name, e.size) for e in stream.entries] == [(m.name, m.size) for m in members]
    assert [(n, size, xxh(d)) for n, size, d in tar_members(blob)] == [
        (e.name, e.size, e.digest) for e in stream.entries]


# (b) Any single-byte change is refused, and only with BadTar.

class Damage:
    """``store`` with the byte at ``at`` set to ``value``."""

    def __init__(self, store: Store, at: int, value: int) -> None:
        self.store, self.at, self.value = store, at, value
        b = store.blob
        self.blob = b[:at] + bytes([value]) + b[at + 1 :]

    def __repr__(self) -> str:
        return f"Damage({self.store!r}, byte {self.at} set to {self.value})"


@st.composite
def damages(draw: st.DrawFn) -> Damage:
    store = draw(stores(max_ovfs=4))
    at = draw(st.integers(0, len(store.blob) - 1))
    return Damage(store, at, draw(st.integers(0, 255).filter(lambda v: v != store.blob[at])))


@fuzz(150)
@given(damages())
def test_single_byte_damage_is_refused(damage: Damage) -> None:
    """Refused, except where neither the tar nor the manifest says what the
    byte must be: the data of ``info.json`` (it holds the manifest, which
    cannot list it), the values of PAX records we do not use (mtime: no
    checksum covers a PAX body), and a checksum field that still reads as
    the same number (``0`` and a leading space, the NUL and space that end
    it).  Even then the OVFs and metadata.json are those of the original."""
    result = outcome(damage.blob)
    if isinstance(result, str):
        return
    good, at = read(damage.store.blob), damage.at
    assert result.entries[1:] == good.entries[1:]
    info = good.entries[0]
    if info.offset <= at < info.offset + info.size:
        return
    header = at - at % BLOCK
    headers = {e.offset - BLOCK for e in good.entries} | {
        r.start - BLOCK for r in damage.store.extended}
    assert any(at in r for r in damage.store.extended) or (
        148 <= at - header < 156 and header in headers
    ), f"byte {at} changed to {damage.value} and the store was accepted"
    assert (result.entries, result.tar_length) == (good.entries, good.tar_length)


@fuzz(150)
@given(st.data())
def test_damaged_tar_is_refused_or_read_as_tarfile_reads_it(data: st.DataObject) -> None:
    """Without a layout to check, a damaged tar the stream accepts must mean
    to tarfile what it means to the stream: same names, sizes and data."""
    fmt = data.draw(st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]))
    names = data.draw(st.lists(flat_names, min_size=1, max_size=3, unique=True))
    members = [Member(n, data.draw(st.integers(0, 600)), data.draw(mtimes), b"") for n in names]
    members = [Member(m.name, m.size, m.mtime, b"d" * m.size) for m in members]
    p = plan(members, fmt)
    blob = bytearray(b"".join(render(p, lambda m, start, n: m.source[start : start + n])))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(blob) - 1))
        blob[at] = data.draw(st.integers(0, 255))
    stream = TarStream(max_total=len(blob), max_entries=100, max_pax=64 << 10,
                       ignore_trailing=False)
    try:
        stream.feed(bytes(blob))
        stream.check_complete()
    except BadTar:
        return
    assert [(n, size, xxh(d)) for n, size, d in tar_members(bytes(blob))] == [
        (e.name, e.size, e.digest) for e in stream.entries]


@fuzz(100)
@given(st.binary(min_size=1, max_size=3 * BLOCK), st.integers(0, 3))
def test_garbage_is_refused_with_bad_tar_only(junk: bytes, where: int) -> None:
    """Junk in place of a header, or after a valid one; checksums made right
    so the parsing behind them runs."""
    head = member(INFO_NAME, INFO)
    block = resum(junk.ljust(BLOCK, b"\0")) + junk[BLOCK:]
    blob = [block + EOF, head + block + EOF, head + block, block][where]
    assert isinstance(outcome(blob, max_total=1 << 20), str)


# (c) The fast path and the steps agree, on good and damaged stores.

@fuzz(60)
@given(damages())
def test_fast_path_and_steps_agree(damage: Damage) -> None:
    for data in (damage.store.blob, damage.blob):
        # 500-byte chunks split every header: the steps read all of them.
        assert outcome(data) == outcome(data, list(range(500, len(data), 500)))


# (d) A truncated stream is refused at finish.

@fuzz(40)
@given(st.data())
def test_truncation_is_refused(data: st.DataObject) -> None:
    blob = data.draw(stores(max_ovfs=4)).blob
    cut = data.draw(st.integers(0, len(blob) - 1))
    reader = OvfTarReader(max_total=len(blob))
    reader.feed(blob[:cut])  # nothing wrong yet
    assert not reader.complete
    with pytest.raises(BadTar, match=f"the stream ended at offset {cut}"):
        reader.finish()
    # The same cut with what follows zeroed: never a valid store either.
    padded = blob[:cut] + bytes(len(blob) - cut)
    if padded != blob:  # the cut was not in zeros already
        assert isinstance(outcome(padded), str)


# Hand-written adversarial headers.

NAME = "0b8a7b52-63b7-4b8e-9a4e-43a3a34e2b6f.ovf"
USTAR = member(NAME, OVF, tarfile.USTAR_FORMAT)
GNU = member(NAME, OVF, tarfile.GNU_FORMAT)


def accepted(blob: bytes) -> list[str]:
    names = [e.name for e in read(blob).entries]
    assert names == [n for n, _, _ in tar_members(blob)]
    return names


def refused(blob: bytes, match: str) -> None:
    with pytest.raises(BadTar, match=match):
        read(blob)


@pytest.mark.parametrize(("field", "start", "value"), [
    pytest.param("mode", 100, b"rw-r--r-", id="mode"),
    pytest.param("uid", 108, b"root\0\0\0\0", id="uid"),
    pytest.param("gid", 116, b"-0000001", id="gid"),
    pytest.param("mtime", 136, b"2020-07-01\0\0", id="mtime"),
    pytest.param("devmajor", 329, b"0x0\0\0\0\0\0", id="devmajor"),
    pytest.param("devminor", 337, b"\x7f" * 8, id="devminor"),
    pytest.param("size", 124, b"%o\0garbage" % len(OVF), id="size-junk-after-nul"),
    pytest.param("uid", 108, b"0\0 00000", id="uid-digits-after-nul"),
])
def test_malformed_number_fields(field: str, start: int, value: bytes) -> None:
    """tarfile stops reading at such a header as if the archive ended there,
    and commons-compress (the engine) fails: refused, not stored."""
    refused(after_info(patched(USTAR, start, value)), f"malformed {field} field")


@pytest.mark.parametrize(("field", "start", "value"), [
    pytest.param("mode", 100, b"rw-r--r-", id="mode"),
    pytest.param("uid", 108, b"root\0\0\0\0", id="uid"),
    pytest.param("mtime", 136, b"2020-07-01\0\0", id="mtime"),
    pytest.param("devminor", 337, b"\x7f" * 8, id="devminor"),
])
@pytest.mark.parametrize("step", [BLOCK, 1 << 20])
def test_malformed_number_fields_in_a_manifest_store(field: str, start: int, value: bytes,
                                                     step: int) -> None:
    """The same in the fast path (whole OVFs of a manifest in one chunk)."""
    files = {NAME: OVF, METADATA_NAME: build_metadata({})}
    manifest = Manifest(tuple(ManifestEntry(n, len(d), xxh(d)) for n, d in files.items()))
    info = member(INFO_NAME, build_info("x", [SD], manifest))
    good = info + USTAR + member(METADATA_NAME, files[METADATA_NAME]) + EOF
    assert [e.name for e in read(good).entries] == [INFO_NAME, *files]
    bad = info + patched(USTAR, start, value) + member(METADATA_NAME, files[METADATA_NAME]) + EOF
    with pytest.raises(BadTar, match=f"malformed {field} field"):
        read(bad, list(range(step, len(bad), step)))


@pytest.mark.parametrize("value", [
    pytest.param(b"   644 \0", id="leading-spaces"),
    pytest.param(b"0000644 ", id="trailing-space"),
    pytest.param(b"644\0\0\0\0\0", id="nul-padded"),
    pytest.param(bytes(8), id="empty"),
    pytest.param(b"\x80" + bytes(6) + b"\x01", id="base-256"),
    pytest.param(b"\xff" * 8, id="base-256-negative"),
])
def test_number_fields_as_writers_write_them(value: bytes) -> None:
    for start in (100, 108, 116, 329, 337):
        assert accepted(after_info(patched(USTAR, start, value))) == [INFO_NAME, NAME]


def test_base256_size() -> None:
    field = b"\x80" + len(OVF).to_bytes(11, "big")
    assert accepted(after_info(patched(GNU, 124, field))) == [INFO_NAME, NAME]


def test_negative_base256_size() -> None:
    refused(after_info(patched(GNU, 124, b"\xff" * 12)), "malformed size field")


def test_size_with_spaces() -> None:
    field = b" %o \0" % len(OVF)
    assert accepted(after_info(patched(USTAR, 124, field.ljust(12, b" ")))) == [INFO_NAME, NAME]


def test_signed_checksum() -> None:
    """Old writers summed signed chars; tarfile and GNU tar accept it."""
    h = bytearray(USTAR[:BLOCK])
    h[265:270] = "jérô".encode()[:5]  # uname: bytes over 127
    h[148:156] = b" " * 8
    signed = sum(b - 256 if b > 127 else b for b in h)
    h[148:156] = b"%06o\0 " % signed
    assert accepted(after_info(bytes(h) + USTAR[BLOCK:])) == [INFO_NAME, NAME]
    h[148:156] = b"%06o\0 " % (signed + 1)
    refused(after_info(bytes(h) + USTAR[BLOCK:]), "bad header checksum")


def test_gnu_header_with_a_prefix() -> None:
    """tarfile joins the prefix field whatever the magic: it would read
    ``evil/<uuid>.ovf``; the reader sees the same path, and refuses it."""
    refused(after_info(patched(GNU, 345, b"evil\0")), "a path, not a flat name")


def test_empty_gnu_long_name() -> None:
    """tarfile reads an entry called "" (the header's own name is replaced)."""
    longname = member("././@LongLink", b"\0", tarfile.GNU_FORMAT, type=tarfile.GNUTYPE_LONGNAME)
    refused(after_info(longname + GNU), "empty")


def test_gnu_long_name_then_pax_path() -> None:
    longname = member("././@LongLink", NAME.encode() + b"\0", tarfile.GNU_FORMAT,
                      type=tarfile.GNUTYPE_LONGNAME)
    pax = member(NAME, OVF, pax_headers={"path": ovf()})
    refused(after_info(longname + pax), "both a PAX path and a GNU long name")


def pax(records: bytes) -> bytes:
    return member("././@PaxHeader", records, type=tarfile.XHDTYPE)


@pytest.mark.parametrize(("records", "why"), [
    pytest.param(b"13 path=x.ovf\n", "wrong length", id="short"),
    pytest.param(b"15 path=x.ovf\n", "wrong length", id="long"),
    pytest.param(b"0 path=x.ovf\n", "malformed|wrong length", id="zero"),
    pytest.param(b"-14 path=x.ovf\n", "malformed", id="negative"),
    pytest.param(b"14path=x.ovf\n\n", "malformed|wrong length", id="no-space"),
    pytest.param(b"99999999999999999999999 path=x\n", "malformed|wrong length", id="huge"),
    pytest.param(b"8 =x.ov\n", "malformed", id="no-key"),
    pytest.param(b"9 path=x\n" * 2, "given twice", id="key-twice"),
    pytest.param(b"14 path=x.ovf\n\0\0", "malformed", id="trailing-nuls"),
    pytest.param(b"11 size=-5\n", "not a decimal", id="negative-size"),
    pytest.param(b"11 size=0x\n", "not a decimal", id="hex-size"),
])
def test_bad_pax_records(records: bytes, why: str) -> None:
    refused(after_info(pax(records) + USTAR), why)


def test_pax_size_larger_than_the_store() -> None:
    big = str(1 << 40).encode()
    record = b"size=" + big + b"\n"
    record = b"%d " % (len(record) + 3) + record
    refused(after_info(pax(record) + USTAR), "exceed the limit|do not fit")


@pytest.mark.parametrize("path", ["../" + NAME, "x/" + NAME, "/" + NAME, "..", "a\0b.ovf"])
def test_pax_path_not_flat(path: str) -> None:
    refused(after_info(member(NAME, OVF, pax_headers={"path": path})),
            "path|directory|control character")


def test_gnu_sparse_entry() -> None:
    refused(after_info(patched(GNU, 156, b"S")), "GNU sparse file entries are not allowed")


def test_hard_link_to_an_ovf() -> None:
    link = member(ovf(), b"", tarfile.GNU_FORMAT, type=tarfile.LNKTYPE, linkname=NAME)
    refused(after_info(GNU, link), "hard link entries are not allowed")


def test_name_with_nul_inside() -> None:
    """Readers stop at the first NUL of the name field: so does ours."""
    assert accepted(after_info(patched(USTAR, len(NAME), b"\0evil.sh"))) == [INFO_NAME, NAME]


def test_name_not_utf8() -> None:
    refused(after_info(patched(USTAR, 0, b"\xff\xfe.ovf\0")), "not UTF-8")


# The layout and the manifest.

def manifest_info(entries: list[dict[str, Any]], **extra: Any) -> bytes:
    import json
    return json.dumps({"Last Updated": "x", "Storage Domains": [{"uuid": SD}],
                       "Manifest": {"algorithm": "xxh3_128", "entries": entries, **extra}}
                      ).encode()


def test_manifest_lists_a_name_twice() -> None:
    entry = {"name": NAME, "size": len(OVF), "digest": xxh(OVF)}
    with pytest.raises(BadManifest, match="twice"):
        parse_info(manifest_info([entry, entry]))
    refused(member(INFO_NAME, manifest_info([entry, entry])) + USTAR + EOF, "twice")


@pytest.mark.parametrize("extra", [{"entry_extra": True}, {"manifest_extra": True}])
def test_manifest_with_extra_keys(extra: dict[str, bool]) -> None:
    entry: dict[str, Any] = {"name": NAME, "size": len(OVF), "digest": xxh(OVF)}
    if "entry_extra" in extra:
        entry["mode"] = 0o644
        info = manifest_info([entry])
    else:
        info = manifest_info([entry], version=2)
    refused(member(INFO_NAME, info) + USTAR + EOF, "exactly the keys")


def test_info_json_not_first() -> None:
    refused(USTAR + member(INFO_NAME, INFO) + EOF, "the first entry must be info.json")


def test_metadata_json_twice() -> None:
    meta = member(METADATA_NAME, build_metadata({}))
    refused(after_info(meta, meta), "'metadata.json' .*: duplicate name")


@pytest.mark.parametrize("status", [
    pytest.param({"not-a-uuid": 1}, id="not-a-uuid"),
    pytest.param({NAME[:-4].upper(): 1}, id="upper-case"),
    pytest.param({NAME[:-4]: True}, id="bool"),
])
def test_planner_refuses_what_the_reader_would(status: dict[str, Any]) -> None:
    """A store the reader refuses must not be planned: the engine side
    would push it only to be told 422."""
    with pytest.raises(BadManifest, match="VM Status"):
        ovf_store_plan("x", SD, [(NAME[:-4], len(OVF), xxh(OVF), OVF)], status, 0)
    with pytest.raises(BadManifest, match="VM Status"):
        StoreTar("x", SD, [(NAME[:-4], len(OVF), xxh(OVF))], status, 0)


# What other writers make.

@pytest.mark.parametrize("fmt", ["gnu", "oldgnu", "posix", "ustar"])
def test_gnu_tar_output(tmp_path: Path, fmt: str) -> None:
    if shutil.which("tar") is None:
        pytest.skip("no tar")
    files = {NAME: OVF, ovf(): OVF * 3, METADATA_NAME: build_metadata({NAME[:-4]: 1})}
    manifest = Manifest(tuple(ManifestEntry(n, len(d), xxh(d)) for n, d in files.items()))
    files = {INFO_NAME: build_info("x", [SD], manifest), **files}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    out = tmp_path / "store.tar"
    subprocess.run(["tar", f"--format={fmt}", "-cf", str(out), "-C", str(tmp_path), *files],
                   check=True)
    blob = out.read_bytes()  # padded to 10240 with zeros
    for cuts in ([], list(range(300, len(blob), 300))):
        s = read(blob, cuts)
        assert [e.name for e in s.entries] == list(files)
        assert s.manifest == manifest


@pytest.mark.parametrize("step", [1, 100, 511, 1 << 20])
def test_non_zero_padding_is_reported_where_it_is(step: int) -> None:
    """The offset in the message is the byte's, however the stream was cut."""
    blob = bytearray(after_info(USTAR))
    at = 1024 + BLOCK + len(OVF) + 17  # in the OVF's padding
    blob[at] = 1
    refused(bytes(blob), f"non-zero padding after '{NAME}' at offset {at}$")
    with pytest.raises(BadTar, match=f"at offset {at}$"):
        read(bytes(blob), list(range(step, len(blob), step)))


@pytest.mark.parametrize("number", [b"1e999", b"-1e400"])
def test_json_number_too_large_for_a_float(number: bytes) -> None:
    """Python reads 1e999 as inf, which it would write back as Infinity:
    not JSON (the same as the NaN and Infinity tokens, refused already)."""
    info = b'{"Last Updated": "x", "Storage Domains": [], "Size": ' + number + b"}"
    with pytest.raises(BadManifest, match="not a finite number"):
        parse_info(info)
    refused(member(INFO_NAME, info) + EOF, "not a finite number")
