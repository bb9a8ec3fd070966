"""``vm import DIR``: read a directory of ``.ovf`` files into the cache.

The cache takes the files in one transaction: one bad file (not XML, no
VM UUID, a disk on an unknown domain) imports nothing and names the file.
Each file is stored as soon as it is parsed and then dropped, so a
directory of 20,000 OVFs takes no more memory than one of ten; the
transaction reads on after the first file the cache refuses, so that the
error is still the one a read of the whole directory would find first.
The price: the cache's write lock is held while the files are parsed
(20,000 files of 20 KiB: 22 s instead of 4), and other writers wait.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping

from .cache import Cache
from .entities import Imported, ImportItem
from .errors import InvalidInput
from .ovf import canonical_uuid, parse


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
             disk_domains: Mapping[str, str]) -> Iterator[ImportItem]:
    """Parse the ``names`` of ``directory`` one by one, as the cache takes
    them.  Once all are read, a disk of ``disk_domains`` that none has is
    an error too: the transaction is still open, so nothing is stored."""
    seen: dict[str, str] = {}  # VM UUID: the file of it, for duplicates
    disks: set[str] = set()
    for name in names:
        path = os.path.join(directory, name)
        try:
            data = _read(path, max_size + 1)
        except OSError as e:
            raise InvalidInput(f"cannot read {path}: {e.strerror}") from None
        if len(data) > max_size:
            raise InvalidInput(f"{path} is larger than {max_size} bytes (max_ovf_size)")
        ovf = parse(data, path)
        if ovf.uuid in seen:
            raise InvalidInput(f"{path} and {seen[ovf.uuid]} describe the same VM {ovf.uuid}")
        seen[ovf.uuid] = path
        disks.update(d.disk_uuid for d in ovf.disks)
        yield ImportItem(path, ovf, data)
    for disk in disk_domains:
        if disk not in disks:
            raise InvalidInput(f"--disk-domain names disk {disk}, which no OVF in "
                               f"{directory} has")


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
    items = read_dir(directory, _names(directory), max_size, overrides)
    try:
        sd = canonical_uuid(default_domain, "storage domain") if default_domain else None
    except InvalidInput:
        for _ in items:  # a bad file or --disk-domain is still the error reported
            pass
        raise
    return cache.import_entities(items, sd, overrides)
