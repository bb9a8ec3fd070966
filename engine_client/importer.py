"""``vm import DIR``: read a directory of ``.ovf`` files into the cache.

Every file is read and parsed before anything is written, and the cache
takes them in one transaction: one bad file (not XML, no VM UUID, a disk
on an unknown domain) imports nothing and names the file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

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


def read_dir(directory: str, max_size: int) -> list[ImportItem]:
    """Parse every ``*.ovf`` file of ``directory`` (not recursive), by name."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".ovf"))
    except OSError as e:
        raise InvalidInput(f"cannot read the directory {directory}: {e.strerror}") from None
    if not names:
        raise InvalidInput(f"{directory} holds no .ovf files")
    items: list[ImportItem] = []
    seen: dict[str, str] = {}
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
        items.append(ImportItem(path, ovf, data))
    return items


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
    items = read_dir(directory, max_size)
    overrides = dict(disk_domains or {})
    known = {d.disk_uuid for item in items for d in item.ovf.disks}
    for disk in overrides:
        if disk not in known:
            raise InvalidInput(f"--disk-domain names disk {disk}, which no OVF in "
                               f"{directory} has")
    sd = canonical_uuid(default_domain, "storage domain") if default_domain else None
    return cache.import_entities(items, sd, overrides)
