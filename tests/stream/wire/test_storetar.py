"""The streamed OVF_STORE tar: the bytes of ``ovf_store_plan``, checked the same
way; and the template-made headers, byte for byte those of ``tarfile``."""

from __future__ import annotations

import tarfile
import uuid

import pytest
import xxhash

from stream.wire.manifest import BadManifest
from stream.wire.storetar import StoreTar
from stream.wire.tarplan import Member, header, header_size, ovf_store_plan, render

SD = str(uuid.uuid4())
DATE = "Wed Jul 01 11:43:07 UTC 2020"


def ovfs(count: int) -> dict[str, bytes]:
    return {str(uuid.uuid4()): f"<ovf:Envelope>{i}</ovf:Envelope>".encode() * (i * 7 + 1)
            for i in range(count)}


def stream(tar: StoreTar, data: dict[str, bytes]) -> bytes:
    out = []
    for piece in tar.pieces():
        out.append(data[tar.ovfs[piece][0]] if isinstance(piece, int) else piece)
    return b"".join(out)


@pytest.mark.parametrize("count", [0, 1, 40])
def test_same_bytes_as_the_full_plan(count: int) -> None:
    data = ovfs(count)
    entries = [(u, len(d), xxhash.xxh3_128_hexdigest(d)) for u, d in data.items()]
    status = {u: 1 for u in list(data)[:2]}
    tar = StoreTar(DATE, SD, entries, status, 1_600_000_000)
    plan, info, metadata, _ = ovf_store_plan(DATE, SD, [(*e, e[0]) for e in entries], status,
                                             1_600_000_000)
    expected = b"".join(render(plan, lambda m, start, n: data[m.source][start:start + n]))
    assert (tar.info, tar.metadata) == (info, metadata)
    assert tar.total_size == plan.total_size == len(expected)
    assert stream(tar, data) == expected


def test_refuses_what_the_plan_refuses() -> None:
    u = str(uuid.uuid4())
    with pytest.raises(BadManifest):
        StoreTar("x", SD, [("not-a-uuid", 1, "0" * 32)], {}, 0)
    with pytest.raises(BadManifest):
        StoreTar("x", SD, [(u, 0, "0" * 32)], {}, 0)
    with pytest.raises(BadManifest):
        StoreTar("x", SD, [(u, 1, "0" * 31)], {}, 0)
    with pytest.raises(BadManifest, match="twice"):
        StoreTar("x", SD, [(u, 1, "0" * 32), (u, 1, "0" * 32)], {}, 0)


def _tobuf(name: str, size: int, mtime: int, fmt: int) -> bytes | None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.type = size, mtime, 0o644, tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    try:
        return info.tobuf(format=fmt, encoding="utf-8", errors="strict")  # type: ignore[arg-type]
    except ValueError:
        return None


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT],
                         ids=["pax", "gnu", "ustar"])
@pytest.mark.parametrize("name", ["a", "x" * 99, "x" * 100, "x" * 101, f"{uuid.uuid4()}.ovf",
                                  "non-ascii-é"], ids=["1", "99", "100", "101", "ovf", "utf8"])
@pytest.mark.parametrize("size", [0, 1, 20480, 8**11 - 1, 8**11], ids=str)
@pytest.mark.parametrize("mtime", [0, 1_700_000_000, 8**11 - 1], ids=str)
def test_headers_are_tarfiles(fmt: int, name: str, size: int, mtime: int) -> None:
    expected = _tobuf(name, size, mtime, fmt)
    member = Member(name, size, mtime, None)
    if expected is None:
        with pytest.raises(ValueError):
            header(member, fmt)
        return
    assert header(member, fmt) == expected
    assert header_size(member, fmt) == len(expected)
