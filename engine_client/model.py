"""The rows of the engine cache, as frozen values, and the statuses they use."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, NamedTuple

from stream.wire.poolmap import Status, domain_json

from .errors import InvalidInput


class VmStatus(enum.IntEnum):
    """oVirt's VMStatus; the ints go into ``metadata.json`` as they are."""

    UNASSIGNED = -1
    DOWN = 0
    UP = 1
    POWERING_UP = 2
    PAUSED = 4
    MIGRATING_FROM = 5
    MIGRATING_TO = 6
    UNKNOWN = 7
    NOT_RESPONDING = 8
    WAIT_FOR_LAUNCH = 9
    REBOOT_IN_PROGRESS = 10
    SAVING_STATE = 11
    RESTORING_STATE = 12
    SUSPENDED = 13
    IMAGE_ILLEGAL = 14
    IMAGE_LOCKED = 15
    POWERING_DOWN = 16

    @classmethod
    def parse(cls, text: str) -> VmStatus:
        """``Up``, ``PoweringUp``, ``powering_up`` or ``2``."""
        key = text.strip().replace("_", "").replace("-", "").lower()
        for s in cls:
            if key in (s.name.replace("_", "").lower(), str(s.value)):
                return s
        raise InvalidInput(f"unknown VM status {text!r}; expected one of "
                           + ", ".join(s.label for s in cls))

    @property
    def label(self) -> str:
        return "".join(w.capitalize() for w in self.name.split("_"))


#: The statuses the pool map carries (stream.wire.poolmap), by the engine's name.
DomainStatus = Status


def parse_domain_status(text: str) -> Status:
    found = Status.lookup(text)
    if found is None:
        raise InvalidInput(f"unknown domain status {text!r}; expected one of "
                           + ", ".join(s.value for s in Status))
    return found


KINDS = ("vm", "template")
SNAPSHOT_OK = "OK"
SNAPSHOT_LOCKED = "LOCKED"


@dataclass(frozen=True)
class Entity:
    """A VM or template.  ``source_digest`` is the engine's current OVF;
    ``ovf_digest`` the cached one that goes into OVF stores (None before the
    updater first processed the entity)."""

    uuid: str
    name: str
    kind: str
    status: int
    origin: int | None
    db_generation: int
    ovf_generation: int
    source_digest: str
    ovf_digest: str | None
    ovf_size: int | None

    @property
    def outdated(self) -> bool:
        return self.db_generation > self.ovf_generation


@dataclass(frozen=True)
class Disk:
    entity_uuid: str
    disk_uuid: str
    sd_uuid: str
    shareable: bool
    active: bool
    locked: bool


@dataclass(frozen=True)
class Snapshot:
    entity_uuid: str
    uuid: str
    type: str
    status: str


@dataclass(frozen=True)
class Domain:
    uuid: str
    type: str
    location: tuple[str, ...]
    status: DomainStatus

    def to_json(self) -> dict[str, object]:
        return domain_json(self.type, self.location, self.status)


@dataclass(frozen=True)
class Host:
    name: str
    url: str
    token: str
    domains: tuple[str, ...]


@dataclass(frozen=True)
class Store:
    """A domain's OVF store state.  ``outdated_seq`` grows with every mark,
    so a push commits ``updated`` only if nothing marked it meanwhile."""

    sd_uuid: str
    outdated: bool
    outdated_seq: int
    generation: int | None
    last_updated: float | None
    stored: frozenset[str]
    digest: str | None
    tar_length: int | None
    host: str | None
    failures: int
    next_attempt: float
    last_error: str | None
    #: This engine may replace the store: it imported it, or found it holding
    #: no OVF before its first push (see Updater._foreign_store).
    claimed: bool = False


@dataclass(frozen=True)
class Pool:
    pool_id: str
    map_version: int
    master_domain: str | None


class Member(NamedTuple):
    """One OVF of a store to build: the entity and its cached OVF blob.

    A named tuple: a store of 10,000 OVFs holds 10,000 of them while it is
    pushed, and ``stream.wire.storetar`` takes them as they are.
    """

    uuid: str
    size: int
    digest: str


@dataclass(frozen=True)
class StoreContent:
    """What a domain's store must hold now, read in one transaction."""

    sd_uuid: str
    outdated_seq: int
    members: tuple[Member, ...]
    vm_status: dict[str, int]


@dataclass(frozen=True)
class HostSync:
    """The pool sync's last view of a host."""

    host: str
    pushed_version: int | None
    last_push: float | None
    last_resend: float | None
    last_error: str | None
    stats: dict[str, Any] | None
    stats_time: float | None
