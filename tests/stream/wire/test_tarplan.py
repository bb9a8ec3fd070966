"""The planner, read back by Python's tarfile and by GNU tar (h11-style: build,
read back, compare; no network, no mocks)."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest
import xxhash

from stream.wire.manifest import INFO_NAME, METADATA_NAME, parse_info
from stream.wire.tarplan import (
    Data,
    Header,
    Member,
    Padding,
    Plan,
    header,
    ovf_store_plan,
    plan,
    render,
)

GiB = 1 << 30
FORMATS = [pytest.param(tarfile.PAX_FORMAT, id="pax"), pytest.param(tarfile.GNU_FORMAT, id="gnu")]
needs_gnu_tar = pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")

LONG = "long-" + "x" * 150 + ".ovf"  # over ustar's 100-byte name field
NON_ASCII = "non-ascii-" + "é" * 40 + ".ovf"
CONTENTS = {
    "short.txt": b"hello\n",
    LONG: os.urandom(3000),
    NON_ASCII: os.urandom(512),  # exactly one block: no padding
    "empty": b"",
    "last.bin": os.urandom(70_000),
}
SOURCES = {name: f"key-{i}" for i, name in enumerate(CONTENTS)}
BY_SOURCE = {SOURCES[name]: data for name, data in CONTENTS.items()}


def members() -> list[Member]:
    return [Member(name, len(data), 1_600_000_000 + i, SOURCES[name])
            for i, (name, data) in enumerate(CONTENTS.items())]


def fetch(member: Member, start: int, length: int) -> bytes:
    data: bytes = BY_SOURCE[member.source]
    return data[start : start + length]


def build(fmt: int = tarfile.PAX_FORMAT) -> tuple[Plan, bytes]:
    p = plan(members(), fmt)
    return p, b"".join(render(p, fetch))


@pytest.mark.parametrize("fmt", FORMATS)
def test_read_back_with_tarfile(fmt: int) -> None:
    p, blob = build(fmt)
    assert len(blob) == p.total_size
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        infos = tf.getmembers()
        assert [i.name for i in infos] == list(CONTENTS)
        for i, info in enumerate(infos):
            assert info.isreg() and info.mode == 0o644 and info.uid == info.gid == 0
            assert info.mtime == 1_600_000_000 + i
            f = tf.extractfile(info)
            assert f is not None and f.read() == CONTENTS[info.name]


@needs_gnu_tar
@pytest.mark.parametrize("fmt", FORMATS)
def test_read_back_with_gnu_tar(fmt: int, tmp_path: Path) -> None:
    _, blob = build(fmt)
    archive = tmp_path / "a.tar"
    archive.write_bytes(blob)
    env = {**os.environ, "LC_ALL": "C.UTF-8"}

    def tar(*args: str) -> bytes:
        return subprocess.run(["tar", "--quoting-style=literal", *args, "-f", str(archive)],
                              check=True, capture_output=True, env=env).stdout

    listing = tar("-tv").decode().splitlines()
    assert [line.split(None, 5)[5] for line in listing] == list(CONTENTS)
    assert all(line.startswith("-rw-r--r-- 0/0") for line in listing)
    for name, data in CONTENTS.items():
        assert tar("-xO", name) == data


def test_not_padded_to_a_record() -> None:
    p, blob = build()
    headers = sum(s.length for s in p.segments if isinstance(s, Header))
    data = sum(-(-len(d) // 512) * 512 for d in CONTENTS.values())
    assert p.total_size == headers + data + 1024  # no 10240-byte record padding
    assert blob.endswith(bytes(1024)) and not blob[:-1024].endswith(bytes(512))


def test_header_lengths_are_measured() -> None:
    p = plan(members())
    lengths = {s.offset: s.length for s in p.segments if isinstance(s, Header)}
    assert sorted(set(lengths.values())) == [512, 1536]  # PAX headers for the long names
    for m, hdr in zip(members(), (s for s in p.segments if isinstance(s, Header)), strict=True):
        assert hdr.data == header(m)


@needs_gnu_tar
@pytest.mark.parametrize(("fmt", "header_size"), [
    pytest.param(tarfile.PAX_FORMAT, 1536, id="pax-extended-header"),
    pytest.param(tarfile.GNU_FORMAT, 512, id="gnu-base-256"),
])
def test_9_gib_member_in_plan_only(fmt: int, header_size: int, tmp_path: Path) -> None:
    """A size over ustar's 8 GiB: PAX adds an extended header, which moves
    every offset after it; both readers agree, seeking over a hole."""
    big = Member("big.img", 9 * GiB, 0, None)
    after = Member("after.txt", 5, 0, b"after")
    p = plan([big, after], fmt)
    first = p.segments[0]
    assert isinstance(first, Header) and first.length == header_size
    assert p.total_size == header_size + 9 * GiB + 512 + 512 + 1024
    path = tmp_path / "sparse.tar"
    with open(path, "wb") as f:  # the 9 GiB stay a hole: headers and small data only
        for seg in p.segments:
            if isinstance(seg, Header) or (isinstance(seg, Data) and seg.member is after):
                f.seek(seg.offset)
                f.write(seg.data if isinstance(seg, Header) else after.source)
        f.truncate(p.total_size)
    with tarfile.open(path) as tf:
        assert [(i.name, i.size) for i in tf.getmembers()] == [
            ("big.img", 9 * GiB), ("after.txt", 5)]
        f2 = tf.extractfile("after.txt")
        assert f2 is not None and f2.read() == b"after"
    listing = subprocess.run(["tar", "-tvf", str(path)], check=True, capture_output=True,
                             text=True).stdout
    assert str(9 * GiB) in listing and "after.txt" in listing
    extracted = subprocess.run(["tar", "-xOf", str(path), "after.txt"], check=True,
                               capture_output=True).stdout
    assert extracted == b"after"


def test_segments_for_range_reassembles_any_slice() -> None:
    p, blob = build()
    rnd = random.Random(42)
    bounds = sorted({s.offset for s in p.segments} | {p.total_size})
    cases = [(a, b) for a in bounds for b in bounds if a <= b]
    cases += [(a, b) for a, b in (sorted(rnd.sample(range(p.total_size + 1), 2))
                                  for _ in range(300))]
    cases += [(b - 1, b + 1) for b in bounds[1:-1]] + [(0, 0), (7, 7)]
    for start, end in cases:
        segs = list(p.segments_for_range(start, end))
        assert sum(s.length for s in segs) == end - start
        assert all(s.length > 0 for s in segs)
        assert b"".join(render(p, fetch, start, end)) == blob[start:end]


def test_segments_for_range_clips() -> None:
    p = plan([Member("a", 1000, 0, b"a" * 1000)])
    hdr, data, pad, eof = p.segments
    assert isinstance(data, Data) and isinstance(pad, Padding)
    assert eof == Padding(1536, 1024)
    assert list(p.segments_for_range(600, 700)) == [Data(600, data.member, 88, 100)]
    assert list(p.segments_for_range(1500, 1600)) == [
        Data(1500, data.member, 988, 12), Padding(1512, 24), Padding(1536, 64)]
    assert list(p.segments_for_range(10, 20)) == [Header(10, hdr.data[10:20])]  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        list(p.segments_for_range(0, p.total_size + 1))
    with pytest.raises(ValueError):
        list(p.segments_for_range(5, 4))


def test_plan_checks_its_segments() -> None:
    with pytest.raises(ValueError):
        Plan((Header(0, bytes(512)), Padding(600, 1024)), 1624)
    with pytest.raises(ValueError):
        Plan((Padding(0, 1024),), 2048)


@pytest.mark.parametrize("name", [
    pytest.param("../x.ovf", id="dotdot"),
    pytest.param("a/b.ovf", id="path"),
    pytest.param("/x.ovf", id="absolute"),
    pytest.param("", id="empty"),
    pytest.param("..", id="parent"),
    pytest.param("a\0b", id="nul"),
    pytest.param("a\nb", id="newline"),
    pytest.param("x" * 256, id="over-name-max"),
])
def test_plan_refuses_bad_names(name: str) -> None:
    with pytest.raises(ValueError):
        plan([Member(name, 1, 0, b"x")])


def test_plan_refuses_duplicates_and_negative_sizes() -> None:
    with pytest.raises(ValueError, match="twice"):
        plan([Member("a", 1, 0, b"x"), Member("a", 1, 0, b"x")])
    with pytest.raises(ValueError, match="negative"):
        plan([Member("a", -1, 0, b"")])


def test_ustar_refuses_what_it_cannot_say() -> None:
    with pytest.raises(ValueError):
        plan([Member(LONG, 1, 0, b"x")], tarfile.USTAR_FORMAT)
    with pytest.raises(ValueError):
        plan([Member("a", 1, 0, b"x")], 7)


def test_render_refuses_a_source_of_another_size() -> None:
    p = plan([Member("a", 10, 0, "k")])
    with pytest.raises(ValueError, match="4 of 10"):
        b"".join(render(p, lambda m, start, n: b"abcd"))


def test_render_fetches_in_pieces() -> None:
    size = 3 * (1 << 20) + 5
    calls: list[tuple[int, int]] = []

    def zeros(m: Member, start: int, n: int) -> bytes:
        calls.append((start, n))
        return bytes(n)

    p = plan([Member("big", size, 0, "k")])
    assert sum(len(b) for b in render(p, zeros)) == p.total_size
    assert calls == [(0, 1 << 20), (1 << 20, 1 << 20), (2 << 20, 1 << 20), (3 << 20, 5)]


# The OVF_STORE layout.

SD = str(uuid.uuid4())


def store() -> tuple[dict[str, bytes], bytes, dict[str, int]]:
    ovfs = {str(uuid.uuid4()): f"<ovf:Envelope>{i}</ovf:Envelope>".encode() * (i + 1)
            for i in range(5)}
    status = {next(iter(ovfs)): 1}
    entries = [(u, len(d), xxhash.xxh3_128_hexdigest(d), u) for u, d in ovfs.items()]
    p, info, metadata, manifest = ovf_store_plan("Wed Jul 01 11:43:07 UTC 2020", SD, entries,
                                                 status, 1_600_000_000)
    blob = b"".join(render(p, lambda m, start, n: ovfs[m.source][start : start + n]))
    assert len(blob) == p.total_size
    assert parse_info(info)[1] == manifest
    assert json.loads(metadata) == {"VM Status": status}
    return ovfs, blob, status


def test_ovf_store_layout_and_manifest() -> None:
    ovfs, blob, status = store()
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        names = tf.getnames()
        assert names == [INFO_NAME, *(f"{u}.ovf" for u in ovfs), METADATA_NAME]
        contents = {n: tf.extractfile(n).read() for n in names}  # type: ignore[union-attr]
    info, manifest = parse_info(contents[INFO_NAME])
    assert info["Storage Domains"] == [{"uuid": SD}]
    assert manifest is not None
    assert [e.name for e in manifest.entries] == names[1:]
    for e in manifest.entries:
        assert e.size == len(contents[e.name])
        assert e.digest == xxhash.xxh3_128_hexdigest(contents[e.name])
    assert json.loads(contents[METADATA_NAME]) == {"VM Status": status}


def test_ovirt_selection_rules_find_every_ovf() -> None:
    """ovirt-storage.md §1.8: every ``*.ovf`` is an entity whose id is the name
    minus ``.ovf``; ``metadata.json`` gives the statuses; any other name,
    ``info.json`` included, is "not an OVF file, will be ignored"."""
    ovfs, blob, status = store()
    found: dict[str, bytes] = {}
    ignored: list[str] = []
    vm_status: dict[str, int] = {}
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        for info in tf:
            f = tf.extractfile(info)
            assert f is not None
            if info.name.endswith(".ovf"):
                found[info.name[: -len(".ovf")]] = f.read()
            elif info.name == METADATA_NAME:
                vm_status = json.loads(f.read())["VM Status"]
            else:
                ignored.append(info.name)
    assert found == ovfs
    assert vm_status == status
    assert ignored == [INFO_NAME]


@needs_gnu_tar
def test_hosted_engine_extracts_its_ovf() -> None:
    """The HE agent pipes the store into ``tar -xOf - <vmid>.ovf`` (§3.4)."""
    ovfs, blob, _ = store()
    vmid = list(ovfs)[2]
    out = subprocess.run(["tar", "-xOf", "-", f"{vmid}.ovf"], input=blob, check=True,
                         capture_output=True).stdout
    assert out == ovfs[vmid]


def test_ovf_store_plan_refuses_bad_entities() -> None:
    with pytest.raises(ValueError):
        ovf_store_plan("x", SD, [("not-a-uuid", 1, "0" * 32, None)], {}, 0)
    with pytest.raises(ValueError):
        ovf_store_plan("x", SD, [(str(uuid.uuid4()), 0, "0" * 32, None)], {}, 0)
    u = str(uuid.uuid4())
    with pytest.raises(ValueError):
        ovf_store_plan("x", SD, [(u, 1, "0" * 32, None), (u, 1, "0" * 32, None)], {}, 0)
