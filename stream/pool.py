"""The pool map: which storage domains form the pool, and their status.

The engine owns it and pushes it (``PUT /pool``); the host keeps it in
memory only and acts on it alone.  Unlike vdsm, which only ever hears
"active" or "attached", the host receives the engine's real statuses and
gates I/O by them:

- new image writes and write tickets: only on ``Active``;
- OVF store writes: also on ``PreparingForMaintenance``, ``Detaching`` and
  ``Locked``, because the engine refreshes the stores just before a domain
  leaves (oVirt's own maintenance flow locks the domain for it);
- reads: on any domain in the map whose storage is reachable.

``map_version`` must grow.  Re-sending the map in force is harmless; an
older or equal version with other content is refused with 409 and the
current version, so a delayed message can never roll the host back.
"""

from __future__ import annotations

import enum
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from volume.errors import Conflict, InvalidRequest, NotFound
from volume.validate import check_uuid

from .wire.poolmap import (
    DOMAIN_TYPES,
    MAX_MAP_VERSION,
    NOT_IN_POOL,
    OVF_WRITABLE,
    Status,
    domain_json,
)

__all__ = ["ALLOWED", "DOMAIN_TYPES", "Access", "DomainEntry", "PoolMap", "Status"]


class Access(enum.Enum):
    WRITE = "image writes"
    OVF_WRITE = "OVF store writes"
    READ = "reads"


ALLOWED: dict[Access, frozenset[Status]] = {
    Access.WRITE: frozenset({Status.ACTIVE}),
    Access.OVF_WRITE: OVF_WRITABLE,
    Access.READ: frozenset(Status),
}


class StaleMap(Conflict):
    code = "stale-map"

    def __init__(self, detail: str, current_version: int) -> None:
        super().__init__(detail)
        self.current_version = current_version
        self.extra = {"map_version": current_version}


class DomainNotAvailable(Conflict):
    code = "domain-not-available"


class NotInPool(NotFound):
    """The engine has not pushed a map with the domain yet (or took it out)."""

    code = NOT_IN_POOL


@dataclass(frozen=True)
class DomainEntry:
    uuid: str
    type: str
    #: A directory for file domains; block devices for block domains.
    location: tuple[str, ...]
    status: Status

    def to_json(self) -> dict[str, Any]:
        return domain_json(self.type, self.location, self.status)


@dataclass(frozen=True)
class PoolMap:
    pool_id: str
    map_version: int
    master_domain: str | None
    domains: dict[str, DomainEntry] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "pool_id": self.pool_id,
            "map_version": self.map_version,
            "master_domain": self.master_domain,
            "domains": {u: d.to_json() for u, d in sorted(self.domains.items())},
        }

    def check(self, sd_uuid: str, access: Access) -> DomainEntry:
        """Raise unless ``access`` is allowed on the domain by this map."""
        entry = self.domains.get(sd_uuid)
        if entry is None:
            raise NotInPool(f"Storage domain {sd_uuid} is not in the pool map")
        if entry.status not in ALLOWED[access]:
            raise DomainNotAvailable(
                f"Storage domain {sd_uuid} is {entry.status}: {access.value} are not allowed"
            )
        return entry


def parse(body: Any) -> PoolMap:
    """Validate the JSON of ``PUT /pool`` (no I/O; see check_locations)."""
    if not isinstance(body, dict):
        raise InvalidRequest("pool map must be a JSON object")
    unknown = set(body) - {"pool_id", "map_version", "master_domain", "domains"}
    if unknown:
        raise InvalidRequest(f"unknown pool map fields: {', '.join(sorted(unknown))}")
    pool_id = check_uuid(body.get("pool_id"), "pool_id")
    version = body.get("map_version")
    if (not isinstance(version, int) or isinstance(version, bool)
            or not 1 <= version <= MAX_MAP_VERSION):
        raise InvalidRequest(
            f"map_version must be an integer from 1 to {MAX_MAP_VERSION}, not {version!r}")
    domains_json = body.get("domains")
    if not isinstance(domains_json, dict):
        raise InvalidRequest("domains must be an object of {uuid: {type, location, status}}")
    domains: dict[str, DomainEntry] = {}
    for key, d in domains_json.items():
        sd = check_uuid(key, "storage domain")
        if not isinstance(d, dict):
            raise InvalidRequest(f"domain {sd} must be an object")
        extra = set(d) - {"type", "location", "status"}
        if extra:
            raise InvalidRequest(f"domain {sd}: unknown fields {', '.join(sorted(extra))}")
        dtype = d.get("type")
        if dtype not in DOMAIN_TYPES:
            raise InvalidRequest(f"domain {sd}: type must be one of {DOMAIN_TYPES}, not {dtype!r}")
        try:
            status = Status(str(d.get("status")))
        except ValueError:
            raise InvalidRequest(
                f"domain {sd}: unknown status {d.get('status')!r}; expected one of "
                + ", ".join(s.value for s in Status)
            ) from None
        loc = d.get("location")
        locs = (loc,) if isinstance(loc, str) else tuple(loc) if isinstance(loc, list) else ()
        if not locs or not all(isinstance(p, str) and p.startswith("/") and "\0" not in p
                               for p in locs):
            raise InvalidRequest(f"domain {sd}: location must be an absolute path (or a list)")
        if dtype == "file" and len(locs) != 1:
            raise InvalidRequest(f"domain {sd}: a file domain has exactly one directory")
        domains[sd] = DomainEntry(sd, dtype, locs, status)
    master = body.get("master_domain")
    if master is not None:
        master = check_uuid(master, "master_domain")
        if master not in domains:
            raise InvalidRequest(f"master_domain {master} is not in the map")
    return PoolMap(pool_id, version, master, domains)


def check_locations(pool: PoolMap) -> None:
    """Refuse domains whose location is of the wrong kind: a regular file
    for a file domain, a directory for a block domain (a mistake in the map).

    A location that cannot be looked at (an NFS server down, a device gone)
    is not refused: the map may be what tells the host that domain is
    Inactive, and the monitor reports it unreachable in ``/stats`` (as
    vdsm's domain monitor does), so I/O on it fails until it is back.

    Blocking (stat), and may hang on a dead NFS mount: see Monitor.run_check.
    """
    for d in pool.domains.values():
        for path in d.location:
            try:
                st = os.stat(path)
            except OSError:
                continue
            ok = stat.S_ISDIR(st.st_mode) if d.type == "file" else stat.S_ISBLK(st.st_mode)
            if not ok:
                kind = "a directory" if d.type == "file" else "a block device"
                raise InvalidRequest(f"domain {d.uuid}: location {path} is not {kind}")


def decide(current: PoolMap, new: PoolMap) -> bool:
    """Whether ``new`` replaces ``current``; raises StaleMap if refused.

    Returns False for a re-send of the map in force (nothing to do).
    """
    if new.map_version > current.map_version:
        return True
    if new == current:
        return False
    raise StaleMap(
        f"map_version {new.map_version} is not newer than the map in force "
        f"(version {current.map_version})",
        current.map_version,
    )


EMPTY = PoolMap(pool_id="", map_version=0, master_domain=None)
