"""``vm import DIR``: read a directory of ``.ovf`` files into the cache.

The cache takes the files in one transaction: one bad file (not XML, no
VM UUID, a disk on an unknown domain) imports nothing and names the file.
Every file is parsed first, with no lock held, and only what it holds is
kept (about 1.5 KiB an OVF); its bytes are read again, checked unchanged,
as the transaction stores it.  Kept whole, 20,000 OVFs of 20 KiB took
531 MiB; parsed inside the transaction, they held the cache's write lock
for 22 s, and other commands gave up after 10 ("database is locked").
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import xxhash

from .cache import Cache
from .entities import Imported, ImportItem
from .errors import InvalidInput
from .ovf import Ovf, canonical_uuid, parse


class Parsed(NamedTuple):
    """A file as parsed: its bytes are read again when stored."""

    path: str
    ovf: Ovf
    digest: str


def _read(path: str, limit: int) -> bytes:
    """Up to ``limit`` bytes of a regular file.  Opened without blocking: a
    FIFO named ``*.ovf`` would otherwise hang the import until a writer came."""
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise InvalidInput(f"{path} is not a regular file")
        return f.read(limit)


def _names(directory: str) -> list[str]:
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".ovf"))
    except OSError as e:
        raise InvalidInput(f"cannot read the directory {directory}: {e.strerror}") from None
    if not names:
        raise InvalidInput(f"{directory} holds no .ovf files")
    return names


def read_dir(directory: str, names: list[str], max_size: int,
             disk_domains: Mapping[str, str]) -> list[Parsed]:
    """Parse the ``names`` of ``directory``, no lock held; what each holds,
    without its bytes.  A disk of ``disk_domains`` that none has is an
    error too."""
    seen: dict[str, str] = {}  # VM UUID: the file of it, for duplicates
    disks: set[str] = set()
    parsed = []
    for name in names:
        path = os.path.join(directory, name)
        data = _read_file(path, max_size)
        ovf = parse(data, path)
        if ovf.uuid in seen:
            raise InvalidInput(f"{path} and {seen[ovf.uuid]} describe the same VM {ovf.uuid}")
        seen[ovf.uuid] = path
        disks.update(d.disk_uuid for d in ovf.disks)
        parsed.append(Parsed(path, ovf, xxhash.xxh3_128_hexdigest(data)))
    for disk in disk_domains:
        if disk not in disks:
            raise InvalidInput(f"--disk-domain names disk {disk}, which no OVF in "
                               f"{directory} has")
    return parsed


def _read_file(path: str, max_size: int) -> bytes:
    try:
        data = _read(path, max_size + 1)
    except OSError as e:
        raise InvalidInput(f"cannot read {path}: {e.strerror}") from None
    if len(data) > max_size:
        raise InvalidInput(f"{path} is larger than {max_size} bytes (max_ovf_size)")
    return data


def _again(parsed: list[Parsed], max_size: int) -> Iterator[ImportItem]:
    """The files read again, one by one as the cache's transaction takes
    them, each the same as when it was parsed."""
    for p in parsed:
        data = _read_file(p.path, max_size)
        if xxhash.xxh3_128_hexdigest(data) != p.digest:
            raise InvalidInput(f"{p.path} changed while it was imported; import again")
        yield ImportItem(p.path, p.ovf, data)


def parse_disk_domains(pairs: list[str]) -> dict[str, str]:
    """``["DISK=DOMAIN", ...]`` as canonical UUIDs."""
    found = {}
    for pair in pairs:
        disk, sep, sd = pair.partition("=")
        if not sep:
            raise InvalidInput(f"--disk-domain takes DISK=DOMAIN, not {pair!r}")
        found[canonical_uuid(disk, "disk")] = canonical_uuid(sd, "storage domain")
    return found


def import_dir(cache: Cache, directory: str, max_size: int, default_domain: str | None = None,
               disk_domains: Mapping[str, str] | None = None) -> list[Imported]:
    overrides = dict(disk_domains or {})
    parsed = read_dir(directory, _names(directory), max_size, overrides)
    sd = canonical_uuid(default_domain, "storage domain") if default_domain else None
    return cache.import_entities(_again(parsed, max_size), sd, overrides)
