"""The pool map's vocabulary, shared by the engine that sends it and the
host that takes it (``PUT /pool``): domain statuses, the statuses in which
OVF stores may be written, domain types, and how one domain is encoded.
Sans-IO: no aiohttp, no volumes."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any


class Status(enum.StrEnum):
    """The engine's storage domain statuses (ovirt-storage.md §2), as sent."""

    ACTIVE = "Active"
    INACTIVE = "Inactive"
    MAINTENANCE = "Maintenance"
    PREPARING_FOR_MAINTENANCE = "PreparingForMaintenance"
    ACTIVATING = "Activating"
    DETACHING = "Detaching"
    UNKNOWN = "Unknown"
    LOCKED = "Locked"

    @classmethod
    def lookup(cls, text: str) -> Status | None:
        """The status named ``text`` in any case, or None."""
        wanted = text.strip().lower()
        return next((s for s in cls if s.value.lower() == wanted), None)


#: Statuses in which a host takes OVF store writes: the engine refreshes the
#: stores of a domain that is leaving, as oVirt's deactivate flow does.
#: oVirt's maintenance flow (DeactivateStorageDomainWithOvfUpdateCommand)
#: sets the domain Locked, refreshes its OVF stores, then deactivates it;
#: Sluice's engine uses PreparingForMaintenance and Detaching for that.
OVF_WRITABLE = frozenset({Status.ACTIVE, Status.PREPARING_FOR_MAINTENANCE, Status.DETACHING,
                          Status.LOCKED})

DOMAIN_TYPES = ("file", "block")

#: The host's error code for a domain its map does not list: the engine
#: added the domain but has not pushed a map with it yet (or removed it).
NOT_IN_POOL = "not-in-pool"

#: The largest map version: the engine keeps it in a signed 64-bit integer
#: (SQLite's, Java's long), so a host must never hold a bigger one.
MAX_MAP_VERSION = 2**63 - 1


def domain_json(type: str, location: Sequence[str], status: Status) -> dict[str, Any]:
    """One domain of the map: a file domain's location is its directory, a
    block domain's the list of its devices."""
    loc: str | list[str] = location[0] if type == "file" else list(location)
    return {"type": type, "location": loc, "status": str(status)}
