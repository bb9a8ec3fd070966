"""PAX records and header checksums every reader of a store can read.

The stored archive must read the same to GNU tar, tarfile and the engine
(commons-compress 1.21).  A PAX value one of them refuses (``mtime=abc``,
``gid=-1``), a key that changes what the data means to one of them
(``SCHILY.filetype=sparse``) or a base-256 checksum (only tarfile reads it)
loses the OVFs after it for that reader, so the reader refuses them.  What
is allowed is checked here against GNU tar and tarfile.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from stream.wire.manifest import INFO_NAME, build_info
from stream.wire.tarread import BadTar, OvfTarReader, Summary

NAME = "0b8a7b52-63b7-4b8e-9a4e-43a3a34e2b6f.ovf"
OVF = b"<ovf:Envelope>...</ovf:Envelope>\n" * 20
INFO = build_info("Wed Jul 01 11:43:07 UTC 2020", ["b7c6d2c4-8c3a-4d5e-9f10-1a2b3c4d5e6f"],
                  None)
EOF = bytes(1024)


def member(name: str, data: bytes, **attrs: object) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info.tobuf(format=tarfile.USTAR_FORMAT) + data + bytes(-len(data) % 512)


def record(key: bytes, value: bytes) -> bytes:
    """One PAX record, its length counting its own digits."""
    rest = b" " + key + b"=" + value + b"\n"
    n = len(rest) + 1
    while len(b"%d" % n) + len(rest) != n:
        n += 1
    return b"%d" % n + rest


def store(records: bytes) -> bytes:
    """info.json, then the OVF behind a PAX header holding ``records``."""
    pax = member("././@PaxHeader", records, type=tarfile.XHDTYPE)
    return member(INFO_NAME, INFO) + pax + member(NAME, OVF) + EOF


def read(blob: bytes) -> Summary:
    reader = OvfTarReader(max_total=len(blob))
    reader.feed(blob)
    return reader.finish()


@pytest.mark.parametrize(("key", "value", "why"), [
    # Values GNU tar or commons-compress refuse ("Error detected parsing the
    # pax header", "Malformed extended header").
    (b"mtime", b"abc", "PAX mtime b'abc' is not a decimal time"),
    (b"mtime", b".5", "not a decimal time"),
    (b"mtime", b"+5", "not a decimal time"),
    (b"mtime", b" 5", "not a decimal time"),
    (b"mtime", b"1e5", "not a decimal time"),
    (b"mtime", b"9" * 20, "not a decimal time"),
    (b"mtime", b"", "not a decimal time"),
    (b"atime", b"x", "PAX atime b'x' is not a decimal time"),
    (b"ctime", b"", "not a decimal time"),
    (b"uid", b"abc", "PAX uid b'abc' is not a decimal below 2\\*\\*32"),
    (b"uid", str(1 << 70).encode(), "not a decimal below"),
    (b"uid", b"4294967296", "not a decimal below"),
    (b"uid", b"+1", "not a decimal below"),
    (b"gid", b"-1", "PAX gid b'-1' is not a decimal below"),
    (b"gid", b"", "not a decimal below"),
    (b"uname", b"\xff\xfe", "PAX uname .* is not UTF-8 without NUL"),
    (b"gname", b"a\0b", "not UTF-8 without NUL"),
    (b"comment", b"\xc3", "not UTF-8 without NUL"),
    (b"path", b"", "PAX path b'' is not a name"),
    # Keys that change what a reader makes of the entry, or that no store needs.
    (b"SCHILY.devmajor", b"x", "PAX key 'SCHILY.devmajor' is not allowed"),
    (b"SCHILY.filetype", b"sparse", "PAX key 'SCHILY.filetype' is not allowed"),
    (b"SCHILY.realsize", b"10", "PAX key 'SCHILY.realsize' is not allowed"),
    (b"SCHILY.xattr.user.x", b"1", "PAX key 'SCHILY.xattr.user.x' is not allowed"),
    (b"LIBARCHIVE.creationtime", b"1", "PAX key 'LIBARCHIVE.creationtime' is not allowed"),
    (b"GNU.sparse.size", b"10", "PAX key 'GNU.sparse.size' is not allowed"),
    (b"linkpath", b"/etc/passwd", "PAX key 'linkpath' is not allowed"),
    (b"hdrcharset", b"BINARY", "PAX key 'hdrcharset' is not allowed"),
    (b"charset", b"ISO-IR 10646 2000 UTF-8", "PAX key 'charset' is not allowed"),
    (b"foo", b"bar", "PAX key 'foo' is not allowed"),
], ids=lambda v: v.decode("utf-8", "replace")[:24] if isinstance(v, bytes) else None)
def test_pax_records_a_reader_cannot_read_are_refused(key: bytes, value: bytes, why: str) -> None:
    with pytest.raises(BadTar, match=f"PAX header at offset 1024 .*{why}") as e:
        read(store(record(key, value)))
    assert e.value.http_status == 422


#: Records GNU tar (tar --format=posix writes atime, ctime and an mtime to
#: the nanosecond), tarfile (path, size, mtime, uid, gid, uname, gname) or
#: commons-compress may write, at the edges of what both readers accept.
ALLOWED = [
    (b"mtime", b"1795353643.983309002"), (b"mtime", b"-5"), (b"mtime", b"-1.5"),
    (b"mtime", b"999999999999999999"), (b"mtime", b"0005"),
    (b"atime", b"1700000000"), (b"ctime", b"17.25"),
    (b"uid", b"0"), (b"uid", b"4294967295"), (b"gid", b"2147483648"),
    (b"uname", "é".encode()), (b"gname", b"a\nb"), (b"uname", b""),
    (b"comment", b"made = by hand"), (b"size", b"%d" % len(OVF)), (b"path", NAME.encode()),
]


@pytest.mark.parametrize(("key", "value"), ALLOWED,
                         ids=lambda v: v.decode("utf-8", "replace")[:24])
def test_pax_records_every_reader_reads_are_accepted(
    tmp_path: Path, key: bytes, value: bytes
) -> None:
    blob = store(record(key, value))
    assert [e.name for e in read(blob).entries] == [INFO_NAME, NAME]
    with tarfile.open(fileobj=io.BytesIO(blob)) as t:
        f = t.extractfile(NAME)
        assert f is not None and f.read() == OVF
    if shutil.which("tar") is None:
        return
    (tmp_path / "store.tar").write_bytes(blob)
    out = subprocess.run(["tar", "-xOf", str(tmp_path / "store.tar"), NAME],
                         capture_output=True)
    assert (out.returncode, out.stdout) == (0, OVF), out.stderr


def test_every_allowed_key_at_once() -> None:
    records = b"".join(record(k, v) for k, v in dict(ALLOWED).items())
    assert [e.name for e in read(store(records)).entries] == [INFO_NAME, NAME]


def with_checksum(header: bytes, field: bytes) -> bytes:
    h = bytearray(header)
    h[148:156] = field
    return bytes(h)


def test_base256_header_checksum_is_refused() -> None:
    """GNU base-256 in the checksum field: tarfile reads it, but
    commons-compress says "Corrupted TAR archive" and GNU tar skips the OVF."""
    ovf = member(NAME, OVF)
    total = sum(ovf[:512]) - sum(ovf[148:156]) + 8 * 0x20
    base256 = with_checksum(ovf, b"\x80" + total.to_bytes(7, "big"))
    with tarfile.open(fileobj=io.BytesIO(member(INFO_NAME, INFO) + base256 + EOF)) as t:
        assert t.getnames() == [INFO_NAME, NAME]  # tarfile alone would read it
    with pytest.raises(BadTar, match=r"header at offset 1024: malformed checksum field"):
        read(member(INFO_NAME, INFO) + base256 + EOF)


@pytest.mark.parametrize("form", [b"%06o\0 ", b"%07o\0", b"%07o ", b"  %05o ", b"%08o"])
def test_octal_header_checksums_are_accepted(form: bytes) -> None:
    """The octal forms GNU tar, commons-compress and tarfile all read."""
    ovf = member(NAME, OVF)
    total = sum(ovf[:512]) - sum(ovf[148:156]) + 8 * 0x20
    blob = member(INFO_NAME, INFO) + with_checksum(ovf, form % total) + EOF
    assert [e.name for e in read(blob).entries] == [INFO_NAME, NAME]
