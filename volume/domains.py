"""Storage domains known to this host, and where a ticket path may point.

A file domain is a directory; a block domain is a set of registered block
devices (its ``path`` holds only small metadata).  A path is accepted for a
transfer only when its real path (after symlinks) lies inside a file
domain's directory or is one of a domain's registered devices.
"""

from __future__ import annotations

import json
import os
import stat
import uuid as uuidlib
from dataclasses import dataclass, field

from .durable import atomic_write, makedirs_durable
from .errors import Forbidden, InvalidRequest, NotFound

DOMAIN_FILE = "domain.json"


@dataclass(frozen=True)
class Domain:
    uuid: str
    type: str  # "file" or "block"
    path: str
    devices: tuple[str, ...] = field(default=())

    def info(self) -> dict[str, object]:
        return {"uuid": self.uuid, "type": self.type, "path": self.path,
                "devices": list(self.devices)}


class DomainRegistry:
    def __init__(self) -> None:
        self._domains: dict[str, Domain] = {}

    def add(self, domain: Domain) -> None:
        self._domains[domain.uuid] = domain

    def get(self, sd_uuid: str) -> Domain:
        try:
            return self._domains[sd_uuid]
        except KeyError:
            raise NotFound(f"No such storage domain {sd_uuid}") from None

    def all(self) -> list[Domain]:
        return list(self._domains.values())

    def resolve(self, path: str) -> tuple[Domain, str]:
        """Return (domain, real path) for a ticket path, or refuse it.

        Blocking (realpath and stat): run it in the I/O executor.
        """
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
        except FileNotFoundError:
            raise InvalidRequest(f"Invalid ticket: {path} does not exist") from None
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise InvalidRequest(
                f"Invalid ticket: {path} is neither a regular file nor a block device"
            )
        for d in self._domains.values():
            if stat.S_ISBLK(st.st_mode):
                if any(os.path.realpath(dev) == real for dev in d.devices):
                    return d, real
            elif d.type == "file":
                root = os.path.realpath(d.path)
                if real.startswith(root + os.sep):
                    return d, real
        raise Forbidden(f"Invalid ticket: {path} is not inside a registered storage domain")


def load_or_create_default(data_dir: str) -> Domain:
    """The embedded default: one file domain under ``<data_dir>/domains``.

    Its UUID is kept in ``domain.json`` so it survives restarts.
    """
    root = os.path.join(os.path.abspath(data_dir), "domains")
    makedirs_durable(root)
    found = sorted(
        e.name for e in os.scandir(root)
        if e.is_dir() and os.path.exists(os.path.join(e.path, DOMAIN_FILE))
    )
    if found:
        sd_uuid = found[0]
    else:
        sd_uuid = str(uuidlib.uuid4())
        path = os.path.join(root, sd_uuid)
        makedirs_durable(os.path.join(path, "images"))
        meta = {"uuid": sd_uuid, "type": "file", "version": 1}
        atomic_write(os.path.join(path, DOMAIN_FILE), json.dumps(meta).encode())
    return Domain(sd_uuid, "file", os.path.join(root, sd_uuid))
