"""The streaming OVF tar validator: planner output in any chunking, oVirt's
own layout, and one named test per refusal, on archives crafted with
``tarfile`` (headers from ``TarInfo.tobuf``, so each is exactly as hostile
as intended and no more)."""

from __future__ import annotations

import io
import random
import tarfile
import tracemalloc
import uuid
from collections.abc import Iterator
from typing import Any, Literal

import pytest
import xxhash

from stream.wire.manifest import (
    INFO_NAME,
    METADATA_NAME,
    Manifest,
    ManifestEntry,
    build_info,
    build_metadata,
)
from stream.wire.tarplan import Header, Member, ovf_store_plan, plan, render
from stream.wire.tarread import BadTar, OvfTarReader, Summary, index

MiB = 1 << 20
GiB = 1 << 30
Format = Literal[0, 1, 2]
SD = str(uuid.uuid4())
EOF = bytes(1024)
OVF = b"<ovf:Envelope>...</ovf:Envelope>\n" * 20
INFO = build_info("Wed Jul 01 11:43:07 UTC 2020", [SD], None)
METADATA = build_metadata({})


def ovf() -> str:
    return f"{uuid.uuid4()}.ovf"


def xxh(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def member(name: str, data: bytes = b"", fmt: Format = tarfile.PAX_FORMAT, **attrs: Any) -> bytes:
    """One member as ``tarfile`` writes it: header(s), data, zero padding."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    return (info.tobuf(format=fmt, encoding="utf-8", errors="surrogateescape")
            + data + bytes(-len(data) % 512))


def store(ovfs: dict[str, bytes], manifest: Manifest | None = None, after: bytes = b"") -> bytes:
    """info.json, the OVFs, metadata.json, ``after``, end blocks."""
    body = b"".join(member(name, data) for name, data in ovfs.items())
    return (member(INFO_NAME, build_info("x", [SD], manifest)) + body
            + member(METADATA_NAME, METADATA) + after + EOF)


def manifest_of(files: dict[str, bytes]) -> Manifest:
    return Manifest(tuple(ManifestEntry(n, len(d), xxh(d)) for n, d in files.items()))


def chunks(data: bytes, step: int) -> Iterator[memoryview]:
    view = memoryview(data)
    for i in range(0, len(data), step):
        yield view[i : i + step]


def read(data: bytes, step: int = 1 << 16, **limits: Any) -> Summary:
    reader = OvfTarReader(**{"max_total": 128 * MiB, **limits})
    for chunk in chunks(data, step):
        reader.feed(chunk)
    return reader.finish()


def refused(data: bytes, match: str, **limits: Any) -> BadTar:
    with pytest.raises(BadTar, match=match) as e:
        read(data, **limits)
    assert e.value.http_status == 422 and e.value.code == "invalid-ovf-tar"
    return e.value


def planned_store(count: int = 4, size: int = 3000) -> tuple[bytes, dict[str, bytes]]:
    ovfs = {str(uuid.uuid4()): bytes([i + 1]) * (size + i * 777) for i in range(count)}
    entries = [(u, len(d), xxh(d), d) for u, d in ovfs.items()]
    p, _, _, _ = ovf_store_plan("x", SD, entries, {next(iter(ovfs)): 1}, 0)
    blob = b"".join(render(p, lambda m, start, n: m.source[start : start + n]))
    return blob, ovfs


# Accepted streams.

@pytest.mark.parametrize("step", [
    pytest.param(1, id="1-byte"),
    pytest.param(511, id="511-bytes"),
    pytest.param(512, id="one-block"),
    pytest.param(1 << 30, id="whole"),
])
def test_planner_output_in_chunks(step: int) -> None:
    blob, ovfs = planned_store()
    s = read(blob, step)
    assert s.tar_length == len(blob) and s.digest == xxh(blob)
    assert [e.name for e in s.entries] == [INFO_NAME, *(f"{u}.ovf" for u in ovfs), METADATA_NAME]
    for e in s.entries:
        assert e.digest == xxh(blob[e.offset : e.offset + e.size])
    for u, data in ovfs.items():
        assert s.entries[[e.name for e in s.entries].index(f"{u}.ovf")].size == len(data)
    assert s.manifest is not None and len(s.manifest.entries) == len(ovfs) + 1
    assert s.vm_status == {next(iter(ovfs)): 1}
    assert s.info["Storage Domains"] == [{"uuid": SD}]


def test_planner_output_in_random_chunks() -> None:
    blob, _ = planned_store(count=20)
    rnd = random.Random(7)
    reader = OvfTarReader(max_total=len(blob))
    pos = 0
    while pos < len(blob):
        n = rnd.choice([1, 2, 511, 512, 513, rnd.randrange(1, 5000)])
        reader.feed(blob[pos : pos + n])
        pos += n
    assert reader.complete and reader.offset == len(blob)
    assert reader.finish().digest == xxh(blob)


def test_parsing_says_when_a_json_parse_may_come() -> None:
    """``parsing`` is true until info.json is parsed and while a JSON
    entry is being collected: the daemon feeds those bytes off its loop."""
    data, _ = planned_store()
    entries = {e.name: e for e in index(data)}
    info, metadata = entries[INFO_NAME], entries[METADATA_NAME]
    reader = OvfTarReader(max_total=128 * MiB)
    seen = []
    for i in range(0, len(data), 512):
        seen.append((i, reader.parsing))
        reader.feed(data[i:i + 512])
    assert all(parsing for at, parsing in seen if at < info.offset + info.size)
    assert not any(parsing for at, parsing in seen
                   if info.offset + info.size <= at <= metadata.offset - 512)
    assert all(parsing for at, parsing in seen
               if metadata.offset <= at < metadata.offset + metadata.size)
    assert not reader.parsing and len(reader.finish().entries) == len(entries)
    assert not OvfTarReader(max_total=MiB, entries_only=True).parsing


def test_trailing_zeros_are_not_part_of_the_tar() -> None:
    blob, _ = planned_store()
    s = read(blob + bytes(10 * MiB), 1 << 20)
    assert s.tar_length == len(blob) and s.digest == xxh(blob)


def test_ovirt_layout_without_manifest() -> None:
    """As the engine writes it (§1.5): ustar headers (commons-compress),
    unregistered OVFs after metadata.json; tarfile pads to 10240."""
    ovfs = {ovf(): OVF for _ in range(3)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        names = [INFO_NAME, *ovfs, METADATA_NAME, "unregistered"]
        for name in names:
            data = {INFO_NAME: INFO, METADATA_NAME: METADATA}.get(name, OVF)
            info = tarfile.TarInfo(ovf() if name == "unregistered" else name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    assert len(blob) % 10240 == 0
    s = read(blob)
    assert s.manifest is None and len(s.entries) == 6
    assert s.entries[4].name == METADATA_NAME and s.entries[5].name.endswith(".ovf")


def test_gnu_headers_and_pax_records_we_ignore() -> None:
    name = ovf()
    blob = (member(INFO_NAME, INFO, tarfile.GNU_FORMAT)
            + member(name, OVF, pax_headers={"comment": "made by hand", "mtime": "1.5"})
            + EOF)
    assert [e.name for e in read(blob).entries] == [INFO_NAME, name]


def test_index_serves_entries_and_ignores_what_follows() -> None:
    blob, ovfs = planned_store()
    volume = blob + b"an older, longer tar was here" * 100
    entries = index(volume)
    by_name = {e.name: volume[e.offset : e.offset + e.size] for e in entries}
    for u, data in ovfs.items():
        assert by_name[f"{u}.ovf"] == data


def test_constant_memory() -> None:
    """Member data is hashed from the caller's buffer, never kept."""
    blob, _ = planned_store(count=4, size=8 * MiB)
    reader = OvfTarReader(max_total=len(blob))
    tracemalloc.start()
    try:
        for chunk in chunks(blob, MiB):
            reader.feed(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reader.finish().tar_length == len(blob)
    assert peak < 256 << 10


# Refused streams: the stream itself.

def test_truncated_in_header() -> None:
    blob, _ = planned_store()
    second_header = read(blob).entries[1].offset - 512
    refused(blob[: second_header + 100], r"ended at offset \d+, inside a header \(100 of 512")


def test_truncated_in_data() -> None:
    blob, _ = planned_store()
    s = read(blob)
    cut = s.entries[1].offset + 10
    refused(blob[:cut], rf"inside '{s.entries[1].name}' \(10 of")


def test_missing_eof_blocks() -> None:
    blob, _ = planned_store()
    refused(blob[:-1024], "without the end-of-archive blocks")
    refused(blob[:-512], "one of the two end-of-archive blocks")


def test_empty_stream() -> None:
    refused(b"", "without the end-of-archive blocks")
    refused(EOF, "no info.json")


def test_bad_header_checksum() -> None:
    blob = bytearray(store({ovf(): OVF}))
    blob[0] ^= 0x01  # 'info.json' becomes 'hnfo.json', checksum unchanged
    refused(bytes(blob), "header at offset 0: bad header checksum")


def test_not_a_tar() -> None:
    refused(b"GIF89a" + bytes(2000), "header at offset 0")


def test_v7_header_without_magic() -> None:
    hdr = bytearray(member(INFO_NAME, INFO)[:512])
    hdr[257:265] = bytes(8)
    hdr[148:156] = b"%06o\0 " % (sum(hdr[:148]) + sum(hdr[156:]) + 256)
    refused(bytes(hdr) + INFO + bytes(-len(INFO) % 512) + EOF, "magic")


def test_lone_zero_block_then_data() -> None:
    blob = member(INFO_NAME, INFO) + bytes(512) + member(ovf(), OVF) + EOF
    refused(blob, "lone zero block")


def test_non_zero_padding() -> None:
    info = member(INFO_NAME, INFO)
    blob = info[:-1] + b"x" + EOF
    refused(blob, "non-zero padding after 'info.json'")


def test_non_zero_data_after_the_end() -> None:
    blob, _ = planned_store()
    refused(blob + bytes(512) + b"junk", "non-zero data after the end")


def test_longer_than_the_store() -> None:
    blob, _ = planned_store()
    refused(blob, "longer than the store", max_total=len(blob) - 1)
    refused(blob + bytes(512), "longer than the store", max_total=len(blob))


def test_entry_that_cannot_fit_is_refused_at_its_header() -> None:
    blob, _ = planned_store()
    s = read(blob)
    reader = OvfTarReader(max_total=s.entries[1].offset + 1000)
    with pytest.raises(BadTar, match="do not fit in the store"):
        reader.feed(blob[: s.entries[1].offset])


def test_error_sticks() -> None:
    reader = OvfTarReader(max_total=MiB)
    with pytest.raises(BadTar) as first:
        reader.feed(member("notes.txt", b"x"))
    with pytest.raises(BadTar) as again:
        reader.feed(EOF)
    assert again.value is first.value
    with pytest.raises(BadTar):
        reader.finish()


# Refused streams: names.

@pytest.mark.parametrize(("name", "why"), [
    pytest.param("../x.ovf", r"path traversal", id="dotdot"),
    pytest.param("a/b.ovf", "a path", id="subdirectory"),
    pytest.param("/x.ovf", "absolute path", id="absolute"),
    pytest.param("..", "is a directory", id="parent"),
    pytest.param("x\nb.ovf", "control character", id="newline"),
])
def test_path_names(name: str, why: str) -> None:
    refused(member(INFO_NAME, INFO) + member(name, OVF) + EOF, why)


def test_dotdot_in_pax_path() -> None:
    evil = member("fine.ovf", OVF, pax_headers={"path": f"../{ovf()}"})
    refused(member(INFO_NAME, INFO) + evil + EOF, "path traversal")


def test_path_in_ustar_prefix() -> None:
    name = "d" * 80 + "/" + ovf()
    blob = member(INFO_NAME, INFO) + member(name, OVF, tarfile.USTAR_FORMAT) + EOF
    refused(blob, "a path, not a flat name")


def test_dotdot_in_gnu_long_name() -> None:
    name = "../" + "d" * 100 + ovf()
    blob = member(INFO_NAME, INFO) + member(name, OVF, tarfile.GNU_FORMAT) + EOF
    refused(blob, "path traversal")


def test_name_not_utf8() -> None:
    blob = member(INFO_NAME, INFO) + member("\udcff.ovf", OVF, tarfile.USTAR_FORMAT) + EOF
    refused(blob, "not UTF-8")


def test_duplicate_name() -> None:
    name = ovf()
    refused(store({name: OVF}, after=member(name, OVF)), f"'{name}' .*: duplicate name")


def test_info_json_not_first() -> None:
    blob = member(ovf(), OVF) + member(INFO_NAME, INFO) + EOF
    refused(blob, "the first entry must be info.json")


def test_info_json_twice() -> None:
    refused(store({}, after=member(INFO_NAME, INFO)), "'info.json' .*: duplicate name")


def test_unknown_name() -> None:
    refused(store({"notes.txt": b"hi"}), "'notes.txt' .*: unknown name")


def test_upper_case_uuid() -> None:
    refused(store({ovf().upper().replace(".OVF", ".ovf"): OVF}), "unknown name")


# Refused streams: entry types.

@pytest.mark.parametrize(("kind", "attrs"), [
    pytest.param("symbolic link", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"},
                 id="symlink"),
    pytest.param("hard link", {"type": tarfile.LNKTYPE, "linkname": INFO_NAME}, id="hardlink"),
    pytest.param("character device", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3},
                 id="char-device"),
    pytest.param("block device", {"type": tarfile.BLKTYPE, "devmajor": 8}, id="block-device"),
    pytest.param("FIFO", {"type": tarfile.FIFOTYPE}, id="fifo"),
    pytest.param("directory", {"type": tarfile.DIRTYPE}, id="directory"),
    pytest.param("contiguous file", {"type": tarfile.CONTTYPE}, id="contiguous"),
])
def test_not_a_regular_file(kind: str, attrs: dict[str, Any]) -> None:
    name = ovf()
    # tarfile ends directory names with '/'.
    refused(store({}, after=member(name, **attrs)), f"entry '{name}/?' .*: {kind} entries")


def test_pax_global_header() -> None:
    glob = tarfile.TarInfo.create_pax_global_header({"comment": "x"})
    refused(glob + store({ovf(): OVF}), "PAX global header entries are not allowed")


def test_gnu_sparse_in_pax() -> None:
    sparse = member(ovf(), OVF, pax_headers={"GNU.sparse.map": "0,10", "GNU.sparse.size": "10"})
    refused(store({}, after=sparse), "GNU.sparse")


def test_oversized_pax_header() -> None:
    big = member(ovf(), OVF, pax_headers={"comment": "x" * 70_000})
    refused(store({}, after=big), r"PAX header of \d+ bytes .* exceeds the limit of 65536")


def test_malformed_pax_record() -> None:
    body = b"99 path=x.ovf\n"
    hdr = member("././@PaxHeader", body, type=tarfile.XHDTYPE)
    refused(member(INFO_NAME, INFO) + hdr + member(ovf(), OVF) + EOF, "wrong length")


def test_pax_header_without_entry() -> None:
    hdr = member("././@PaxHeader", b"14 path=x.ovf\n", type=tarfile.XHDTYPE)
    refused(member(INFO_NAME, INFO) + hdr + EOF, "not followed by an entry")


# Refused streams: sizes and counts.

def test_oversized_entry() -> None:
    # The header alone is refused: the 100 MiB are never needed.
    p = plan([Member(INFO_NAME, len(INFO), 0, INFO), Member(ovf(), 100 * MiB, 0, None)])
    ovf_header = [s for s in p.segments if isinstance(s, Header)][1]
    header_end = ovf_header.offset + ovf_header.length
    head = b"".join(render(p, lambda m, start, n: b"", 0, header_end))
    reader = OvfTarReader(max_total=GiB, max_entry_size=64 * MiB)
    with pytest.raises(BadTar, match=r"104857600 bytes exceed the limit of 67108864"):
        reader.feed(head)



def test_oversized_entry_read_whole() -> None:
    """The fast path over whole entries applies the entry limit too."""
    files = {ovf(): OVF * 9}
    data = manifest_store(files, files)
    size = len(OVF * 9)
    for step in (len(data), 512):
        refused(data, f"{size} bytes exceed the limit of {size - 1}", step=step,
                max_entry_size=size - 1)


def test_oversized_info_json() -> None:
    refused(store({}), "exceed the limit of 100", max_meta=100)


def test_empty_ovf() -> None:
    refused(store({ovf(): b""}), "empty entry")


def bomb(count: int, size: int) -> Iterator[bytes]:
    yield member(INFO_NAME, INFO)
    for _ in range(count):
        yield member(ovf(), b"x" * size)
    yield EOF


@pytest.mark.parametrize(("size", "why"), [
    pytest.param(0, "empty entry", id="empty-entries"),
    pytest.param(1, "more than 10 entries", id="tiny-entries"),
])
def test_tar_bomb_fails_fast(size: int, why: str) -> None:
    reader = OvfTarReader(max_total=1 << 40, max_entries=10)
    fed = 0
    with pytest.raises(BadTar, match=why):
        for piece in bomb(1_000_000, size):  # about a GiB if read whole
            reader.feed(piece)
            fed += len(piece)
    assert fed < 11 * 1024 + len(member(INFO_NAME, INFO))


# Refused streams: the manifest.

def manifest_store(files: dict[str, bytes], listed: dict[str, bytes]) -> bytes:
    return store(files, manifest_of({**listed, METADATA_NAME: METADATA}))


def test_manifest_matches() -> None:
    files = {ovf(): OVF, ovf(): OVF * 2}
    s = read(manifest_store(files, files))
    assert s.manifest == manifest_of({**files, METADATA_NAME: METADATA})


def test_manifest_order_is_free() -> None:
    files = {ovf(): OVF, ovf(): OVF * 2}
    listed = dict(reversed(files.items()))
    assert read(manifest_store(files, listed)).manifest is not None


def test_manifest_missing_entry() -> None:
    files = {ovf(): OVF}
    gone = ovf()
    refused(manifest_store(files, {**files, gone: OVF}),
            f"1 entries of the manifest are missing from the tar, the first '{gone}'")


def test_manifest_extra_entry() -> None:
    extra = ovf()
    refused(manifest_store({extra: OVF}, {}), f"'{extra}' .*: not listed in the manifest")


def test_manifest_wrong_size() -> None:
    name = ovf()
    refused(manifest_store({name: OVF}, {name: OVF + b"!"}),
            f"'{name}' .*: {len(OVF)} bytes, the manifest says {len(OVF) + 1}")


def test_manifest_wrong_digest() -> None:
    name = ovf()
    tampered = OVF.replace(b"...", b"!!!")
    refused(manifest_store({name: tampered}, {name: OVF}),
            f"'{name}' .*: digest {xxh(tampered)}, the manifest says {xxh(OVF)}")


def test_manifest_malformed_json() -> None:
    blob = member(INFO_NAME, b'{"Last Updated": "x", "Manifest": {') + EOF
    refused(blob, "'info.json' .*: info.json is not valid JSON")


def test_manifest_malformed() -> None:
    info = build_info("x", [SD], None)[:-2] + b', "Manifest": {"algorithm": "md5"}}'
    refused(member(INFO_NAME, info) + EOF, "'info.json' .*: Manifest must have exactly")


def test_metadata_malformed() -> None:
    blob = member(INFO_NAME, INFO) + member(METADATA_NAME, b"[]") + EOF
    refused(blob, "'metadata.json' .*: metadata.json is not a JSON object")


# The fast path (whole OVFs of a manifest in one chunk) and the steps agree.

def _defect(kind: str) -> tuple[bytes, str]:
    """A manifest store of 30 OVFs with one defect in the 17th; what it says."""
    files = {ovf(): OVF * (1 + i % 3) for i in range(30)}
    listed = dict(files)
    bad = list(files)[16]
    if kind == "digest":
        files[bad] = files[bad].replace(b"...", b"!!!")
        why = f"'{bad}' .*: digest {xxh(files[bad])}, the manifest says {xxh(listed[bad])}"
    elif kind == "size":
        listed[bad] = files[bad] + b"!"
        why = f"'{bad}' .*: {len(files[bad])} bytes, the manifest says {len(files[bad]) + 1}"
    else:
        why = ""
    blob = manifest_store(files, listed)
    if kind in ("padding", "checksum"):
        head = blob.index(bad.encode() + b"\0")  # its header, not the manifest
        if kind == "padding":
            end = head + 512 + len(files[bad])
            blob = blob[:end] + b"x" + blob[end + 1:]
            why = f"non-zero padding after '{bad}'"
        else:
            mode = head + 100  # a digit of the mode: the stored checksum no longer adds up
            blob = blob[:mode] + (b"1" if blob[mode:mode + 1] != b"1" else b"2") + blob[mode + 1:]
            why = "bad header checksum"
    return blob, why


@pytest.mark.parametrize("kind", ["none", "digest", "size", "padding", "checksum"])
def test_fast_path_agrees_with_the_steps(kind: str) -> None:
    blob, why = _defect(kind)
    if kind == "none":
        whole, steps = read(blob, len(blob)), read(blob, 1)
        assert whole == steps and len(whole.entries) == 32
        return
    fast = refused(blob, why, step=len(blob))
    slow = refused(blob, why, step=1)
    assert str(fast) == str(slow)
