"""Tar header blocks, PAX records and flat-name rules, shared by the planner
and the reader.

Only what an OVF store needs is understood: ustar headers with POSIX
(``ustar\\0`` ``00``) or GNU (``ustar  \\0``) magic, PAX extended headers
(POSIX.1-2001, ``x``) and GNU long names (``L``).  Everything here raises
plain ``ValueError`` with a reason; the reader adds where it happened.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
#: Two zero blocks end an archive (POSIX ustar); we do not pad to 10240.
EOF_SIZE = 2 * BLOCK
#: NAME_MAX on Linux: a longer name cannot be extracted anywhere.
MAX_NAME_BYTES = 255

REGULAR = (b"0", b"\0")
PAX = b"x"
GNU_LONGNAME = b"L"

_POSIX_MAGIC = b"ustar\x0000"
_GNU_MAGIC = b"ustar  \x00"
#: A number field as tarfile, GNU tar and commons-compress (the engine's
#: reader) all read it: leading spaces, octal digits, then only NULs and
#: spaces.  tarfile ignores what follows a NUL but commons-compress refuses it.
_OCTAL = re.compile(rb" *([0-7]+)[ \0]*")
#: The same, possibly empty (zero): GNU tar leaves devmajor/devminor all NULs.
_OCTAL_OR_EMPTY = re.compile(rb" *[0-7]*[ \0]*")
#: The number fields a reader parses besides size and checksum: (what, start, end).
_OTHER_NUMBERS = (("mode", 100, 108), ("uid", 108, 116), ("gid", 116, 124),
                  ("mtime", 136, 148), ("devmajor", 329, 337), ("devminor", 337, 345))
_DECIMAL = re.compile(rb"[0-9]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SIGNED = struct.Struct("148b8x356b")

#: Entry types we refuse, named for the error message.
KINDS = {
    b"1": "hard link", b"2": "symbolic link", b"3": "character device",
    b"4": "block device", b"5": "directory", b"6": "FIFO", b"7": "contiguous file",
    b"g": "PAX global header", b"K": "GNU long link name", b"S": "GNU sparse file",
    b"V": "volume label", b"M": "multi-volume continuation", b"D": "GNU dump directory",
    b"N": "GNU old long name",
}

#: A PAX time as GNU tar reads it (an optional '-', digits, a fraction) and
#: commons-compress does (Double.parseDouble); 18 digits fit a 64-bit time_t.
_PAX_TIME = re.compile(rb"-?[0-9]{1,18}(?:\.[0-9]{1,9})?")
#: A PAX uid or gid: GNU tar refuses a sign or a value beyond uid_t (2**32 - 1).
_PAX_ID = re.compile(rb"[0-9]{1,10}")


def _is_id(value: bytes) -> bool:
    return _PAX_ID.fullmatch(value) is not None and int(value) < 1 << 32


def _is_text(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\0" not in value


#: The only PAX keys a store may use, and what each value must be: what GNU
#: tar (1.34) and commons-compress 1.21 (the engine's reader) both read
#: without an error, tried against both; a value one of them refuses would
#: cost the engine or an operator the OVFs after it.  Nothing legitimate
#: needs more: Sluice plans PAX with tarfile, which writes only path, size,
#: mtime, uid, gid, uname and gname (for values a ustar field cannot hold),
#: the engine's TarArchiveOutputStream, with its default settings
#: (LONGFILE_ERROR, BIGNUMBER_ERROR), writes no PAX at all, and ``tar
#: --format=posix`` adds atime and ctime (times to the nanosecond).  Every
#: other key is refused, never ignored: GNU.sparse.* and SCHILY.filetype=sparse
#: turn the data into a sparse map for commons-compress, linkpath and
#: hdrcharset change what the name means, and the rest (SCHILY.devmajor=x,
#: unknown keys) has no use here worth finding out which reader chokes on it.
_PAX_VALUES: dict[str, tuple[Callable[[bytes], object], str]] = {
    "path": (bool, "a name"),  # not empty; then checked as a flat name
    "size": (_DECIMAL.fullmatch, "a decimal number"),
    "mtime": (_PAX_TIME.fullmatch, "a decimal time"),
    "atime": (_PAX_TIME.fullmatch, "a decimal time"),
    "ctime": (_PAX_TIME.fullmatch, "a decimal time"),
    "uid": (_is_id, "a decimal below 2**32"),
    "gid": (_is_id, "a decimal below 2**32"),
    "uname": (_is_text, "UTF-8 without NUL"),
    "gname": (_is_text, "UTF-8 without NUL"),
    "comment": (_is_text, "UTF-8 without NUL"),
}


def padding(size: int) -> int:
    """Zeros after ``size`` bytes of member data, up to the next block."""
    return -size % BLOCK


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a flat member name, or None when it is.

    One file in the current directory: not empty, no ``/`` (so no path,
    no absolute name, no ``..`` component), not ``.`` or ``..``, no
    backslash, no control character (NUL included), valid UTF-8 of at most
    255 bytes.
    """
    if not name:
        return "empty name"
    if name.startswith("/"):
        return "absolute path"
    if name in (".", ".."):
        return f"{name!r} is a directory"
    if name.startswith("../") or "/../" in name or name.endswith("/.."):
        return "path traversal ('..')"
    if "/" in name:
        return "a path, not a flat name"
    if "\\" in name:
        return "backslash in name"
    if _CONTROL.search(name):
        return "control character in name"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if len(encoded) > MAX_NAME_BYTES:
        return f"name longer than {MAX_NAME_BYTES} bytes"
    return None


@dataclass(frozen=True)
class RawHeader:
    """What a header block says, before PAX or GNU long-name overrides."""

    name: bytes
    type: bytes
    size: int


def _cstr(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


def _number(field: bytes, what: str) -> int:
    if field[0] == 0x80:  # GNU base-256, positive (sizes of 8 GiB and more)
        return int.from_bytes(field[1:], "big")
    m = _OCTAL.fullmatch(field)
    if m is None:
        raise ValueError(f"malformed {what} field {field!r}")
    return int(m.group(1), 8)


def _check_numbers(block: bytes) -> None:
    """Refuse a header whose other number fields tarfile could not read (it
    would take the header for the end of the archive) nor the engine."""
    for what, start, end in _OTHER_NUMBERS:
        field = block[start:end]
        # Base-256 (0x80 positive, 0xff negative: GNU tar's large or negative values).
        if field[0] not in (0x80, 0xFF) and _OCTAL_OR_EMPTY.fullmatch(field) is None:
            raise ValueError(f"malformed {what} field {field!r}")


def _check_sum(block: bytes, strict: bool) -> None:
    # Octal only, as GNU tar writes it: tarfile would read base-256 here, but
    # commons-compress and GNU tar refuse it and lose the entry.  (Not
    # ``strict``: a store committed before, read as it was then accepted.)
    if strict:
        m = _OCTAL.fullmatch(block[148:156])
        if m is None:
            raise ValueError(f"malformed checksum field {block[148:156]!r}")
        stored = int(m.group(1), 8)
    else:
        stored = _number(block[148:156], "checksum")
    unsigned = sum(block) - sum(block[148:156]) + 8 * 0x20
    # Old writers summed signed chars; tarfile and GNU tar accept both.
    if stored != unsigned and stored != sum(_SIGNED.unpack(block)) + 8 * 0x20:
        raise ValueError(f"bad header checksum (stored {stored:o}, computed {unsigned:o})")


def parse_header(block: bytes, strict: bool = True) -> RawHeader:
    """Parse one non-zero 512-byte header block."""
    _check_sum(block, strict)
    magic = block[257:265]
    if magic not in (_POSIX_MAGIC, _GNU_MAGIC):
        raise ValueError(f"not a ustar, PAX or GNU header (magic {magic!r})")
    _check_numbers(block)
    name = _cstr(block[0:100])
    # tarfile joins the prefix whatever the magic (GNU headers keep atime and
    # ctime there): read the name as it does, so a path is refused as a path.
    prefix = _cstr(block[345:500])
    if prefix:
        name = prefix + b"/" + name
    return RawHeader(name, block[156:157], _number(block[124:136], "size"))


def parse_pax(body: bytes, strict: bool = True) -> dict[str, bytes]:
    """The records ``"<len> <key>=<value>\\n"`` of a PAX extended header.

    Every record's length must be exact, keys unique, and (``strict``)
    only the keys of ``_PAX_VALUES`` are allowed, each with a value every
    reader of the store reads.  Not ``strict`` (a store committed before
    these rules, read as it was accepted then): only keys that change what
    the data means are refused, and path and size checked.  Values stay
    bytes; keys are UTF-8.
    """
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(body):
        space = body.find(b" ", pos, pos + 21)
        length_text = body[pos:space] if space > pos else b""
        if not _DECIMAL.fullmatch(length_text):
            raise ValueError(f"malformed PAX record at byte {pos}")
        end = pos + int(length_text)
        if end > len(body) or end <= space + 1 or body[end - 1] != 0x0A:
            raise ValueError(f"PAX record at byte {pos} has a wrong length")
        key_bytes, eq, value = body[space + 1 : end - 1].partition(b"=")
        try:
            key = key_bytes.decode("utf-8")
        except UnicodeDecodeError:
            key = ""
        if not eq or not key:
            raise ValueError(f"malformed PAX record at byte {pos}")
        if key in records:
            raise ValueError(f"PAX key {key!r} given twice")
        rule = _PAX_VALUES.get(key)
        if rule is None and (strict or key in ("linkpath", "hdrcharset")
                             or key.startswith("GNU.sparse.")):
            raise ValueError(f"PAX key {key!r} is not allowed")
        if rule is not None and (strict or key in ("path", "size")) and not rule[0](value):
            raise ValueError(f"PAX {key} {value[:40]!r} is not {rule[1]}")
        records[key] = value
        pos = end
    return records


def pax_overrides(records: dict[str, bytes]) -> tuple[bytes | None, int | None]:
    """The ``path`` and ``size`` a PAX header sets for the next entry."""
    size = records.get("size")  # checked by parse_pax, as the path is
    return records.get("path"), None if size is None else int(size)


def entry_name(raw: RawHeader, pax: dict[str, bytes] | None,
               longname: bytes | None) -> tuple[bytes, int]:
    """The name and size of the entry ``raw`` heads, with the PAX records
    (:func:`parse_pax`) and GNU long name (:func:`parse_longname`) read
    before it, if any, applied.  Both may not name it."""
    path = size = None
    if pax is not None or longname is not None:
        path, size = pax_overrides(pax or {})
        if path is not None and longname is not None:
            raise ValueError("both a PAX path and a GNU long name")
    return path or longname or raw.name, raw.size if size is None else size


def shown_name(raw: RawHeader, pax: dict[str, bytes] | None, longname: bytes | None) -> str:
    """The name of the entry ``raw`` heads for a message refusing it: the
    overrides applied as :func:`entry_name` does, but unchecked."""
    name = longname
    if pax is not None:
        name = pax.get("path", name)
    return (name or raw.name).decode("utf-8", "replace")


def parse_longname(body: bytes) -> bytes:
    """The name in a GNU ``L`` body: NUL-terminated, only NULs after it."""
    name, _, rest = body.partition(b"\0")
    if rest.strip(b"\0"):
        raise ValueError("GNU long name has data after its NUL")
    if not name:  # tarfile would read an entry called ""
        raise ValueError("GNU long name is empty")
    return name
