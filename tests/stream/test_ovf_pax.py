"""A store the engine's reader or GNU tar could not read is never committed:
PAX records they refuse, or read as a sparse map, and a base-256 header
checksum were answered 200 and served back."""

from __future__ import annotations

import re
import tarfile

import pytest

from .conftest import Client
from .test_ovf import build_tar, push, served
from .wire.test_tarpax import EOF, INFO, NAME, OVF, member, record


def with_pax(key: bytes, value: bytes) -> bytes:
    pax = member("././@PaxHeader", record(key, value), type=tarfile.XHDTYPE)
    return member("info.json", INFO) + pax + member(NAME, OVF) + EOF


def with_base256_checksum() -> bytes:
    ovf = bytearray(member(NAME, OVF))
    total = sum(ovf[:512]) - sum(ovf[148:156]) + 8 * 0x20
    ovf[148:156] = b"\x80" + total.to_bytes(7, "big")
    return member("info.json", INFO) + bytes(ovf) + EOF


@pytest.mark.parametrize(("body", "detail"), [
    (with_pax(b"mtime", b"abc"), "PAX mtime b'abc' is not a decimal time"),
    (with_pax(b"uid", str(1 << 70).encode()), "PAX uid .* is not a decimal below 2"),
    (with_pax(b"gid", b"-1"), "PAX gid b'-1' is not a decimal below 2"),
    (with_pax(b"SCHILY.filetype", b"sparse"), "PAX key 'SCHILY.filetype' is not allowed"),
    (with_base256_checksum(), "^header at offset 1024: malformed checksum field"),
], ids=["mtime", "uid", "gid", "star-sparse", "base256-checksum"])
async def test_stores_other_readers_cannot_read_are_refused(
    client: Client, sd: str, body: bytes, detail: str
) -> None:
    good, _ = build_tar(sd)
    assert (await push(client, sd, good))[0] == 200
    status, answer = await push(client, sd, body)
    assert status == 422, answer
    assert answer["error"] == "invalid-ovf-tar"
    assert re.search(detail, answer["detail"]), answer["detail"]
    assert await served(client, sd) == (1, good)  # nothing committed
