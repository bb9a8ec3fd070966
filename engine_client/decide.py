"""What the updater does, as pure functions over cache rows.

oVirt's rules (ProcessOvfUpdateForStoragePool, ovirt-storage.md §1.1, §1.5),
kept as they are:

- an entity needs processing when its ``db_generation`` is ahead of its
  ``ovf_generation``; external VMs (origin 4) never go to OVF stores;
- a locked entity is skipped and keeps its old cached OVF: ImageLocked, a
  locked disk, a snapshot that is not OK (its generation moving while it
  is processed is checked by the cache when it commits);
- processing marks outdated the domains holding an active non-shareable
  disk of the entity, those whose store lists it, and for an entity with
  no active non-shareable disk every Active domain;
- a store holds every entity with an active non-shareable disk on its
  domain, plus every entity with no active non-shareable disk anywhere
  (no disks, or only shareable ones: oVirt's
  ``GetVmsAndTemplatesIdsWithoutAttachedImageDisks(pool, shareable=false)``,
  which §1.5 of the reference shortens to "diskless"), so that those can be
  recovered from any domain; ``metadata.json`` lists the VMs that are not
  Down.

Done better: failed domains are retried with exponential backoff and
jitter instead of waiting for the next hourly run, and hosts are tried in
the order of how likely they are to take the write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from stream.wire.poolmap import OVF_WRITABLE

from .model import (
    SNAPSHOT_OK,
    Disk,
    Domain,
    DomainStatus,
    Entity,
    Host,
    Member,
    Snapshot,
    Store,
    VmStatus,
)
from .ovf import EXTERNAL_ORIGIN


def needs_processing(entity: Entity) -> bool:
    return entity.outdated and entity.origin != EXTERNAL_ORIGIN


def lock_reason(entity: Entity, disks: Sequence[Disk], snapshots: Sequence[Snapshot]) -> str | None:
    """Why ``entity`` must not be processed now, or None."""
    if entity.status == VmStatus.IMAGE_LOCKED:
        return f"{entity.kind} is ImageLocked"
    for d in disks:
        if d.locked:
            return f"disk {d.disk_uuid} is locked"
    for s in snapshots:
        if s.status != SNAPSHOT_OK:
            return f"snapshot {s.uuid} is {s.status}"
    return None


def anchors(disks: Sequence[Disk]) -> list[Disk]:
    """The disks that tie an entity to their domains' stores: the active,
    non-shareable ones.  An entity with none is in every store.

    oVirt's two queries look at image disks, not at their attachment:
    ``GetVmAndTemplatesIdsByStorageDomainId(sd, false, true)`` takes the
    non-shareable ones whose image is the active volume (not a snapshot's),
    and ``GetVmsAndTemplatesIdsWithoutAttachedImageDisks(pool, false)`` the
    entities with no non-shareable one, plugged or not.  The cache holds no
    snapshot volumes, and its ``active`` is the attachment's (a deactivated
    disk).  It keeps its choice that an inactive disk counts as no disk: it
    puts its entity in no store of its own, so such an entity with no other
    goes to every store instead, where oVirt keeps it in its disk's.  That
    way it is still in some store, never in none.
    """
    return [d for d in disks if d.active and not d.shareable]


def domains_to_mark(
    disks: Sequence[Disk], listed_in: Iterable[str], active_domains: Iterable[str]
) -> set[str]:
    """The domains whose stores must be rewritten after an entity changed."""
    tied = anchors(disks)
    marks = {d.sd_uuid for d in tied}
    marks.update(listed_in)
    if not tied:
        marks.update(active_domains)
    return marks


def active_domains(domains: Iterable[Domain]) -> list[str]:
    return [d.uuid for d in domains if d.status == DomainStatus.ACTIVE]


def holds(sd_uuid: str, disks: Sequence[Disk]) -> bool:
    """Whether a store of ``sd_uuid`` holds an entity with these disks."""
    tied = anchors(disks)
    return not tied or any(d.sd_uuid == sd_uuid for d in tied)


def store_members(
    sd_uuid: str, entities: Iterable[Entity], disks: Mapping[str, Sequence[Disk]]
) -> list[Member]:
    """The cached OVFs a store of ``sd_uuid`` holds, in UUID order."""
    found = [
        Member(e.uuid, e.ovf_size, e.ovf_digest)
        for e in entities
        if e.ovf_digest is not None and e.ovf_size is not None
        and e.origin != EXTERNAL_ORIGIN and holds(sd_uuid, disks.get(e.uuid, ()))
    ]
    return sorted(found, key=lambda m: m.uuid)


def reports_status(kind: str, status: int) -> bool:
    """Whether ``metadata.json`` lists a member's status: a VM that is not Down."""
    return kind == "vm" and status != VmStatus.DOWN


def vm_statuses(entities: Iterable[Entity], members: Iterable[Member]) -> dict[str, int]:
    """``metadata.json``'s ``VM Status``: the member VMs that are not Down."""
    wanted = {m.uuid for m in members}
    return {
        e.uuid: e.status for e in sorted(entities, key=lambda e: e.uuid)
        if e.uuid in wanted and reports_status(e.kind, e.status)
    }


def backoff_delay(failures: int, base: float, cap: float, jitter: float, rand: float) -> float:
    """Seconds before retry number ``failures`` (1 for the first retry).

    ``base * 2**(failures-1)``, capped, then scaled down by up to ``jitter``
    with ``rand`` in [0, 1): many engines retrying one host spread out.
    """
    delay = min(cap, base * 2.0 ** min(max(failures - 1, 0), 30))
    return delay * (1 - jitter * rand)


def pushable(domain: Domain | None, store: Store, now: float, retry_now: bool) -> str | None:
    """Why an outdated store is not pushed this pass, or None to push it."""
    if domain is None:
        return "the domain is not known"
    if domain.status not in OVF_WRITABLE:
        return f"the domain is {domain.status}"
    if not retry_now and store.next_attempt > now:
        return f"retrying in {store.next_attempt - now:.0f} s"
    return None


def host_order(sd_uuid: str, hosts: Iterable[Host],
               reports: Mapping[str, Mapping[str, Any]]) -> list[Host]:
    """Hosts serving ``sd_uuid``, the likeliest to take an OVF write first.

    ``reports`` holds each host's last ``GET /stats``: hosts whose map has
    the domain writable and reachable come first, then those not heard from,
    then the rest (their map or storage may have recovered since).
    """
    def rank(host: Host) -> int:
        report = reports.get(host.name)
        if report is None:
            return 1
        d = report.get("domains", {}).get(sd_uuid)
        if not isinstance(d, dict):
            return 2
        good = d.get("status") in OVF_WRITABLE and d.get("reachable", True) is not False
        return 0 if good else 2

    serving = [h for h in hosts if sd_uuid in h.domains]
    return sorted(serving, key=lambda h: (rank(h), h.name))


def foreign_store(sd: str, host: str, info: Mapping[str, Any]) -> str | None:
    """Why a store this engine never pushed nor imported must not be pushed,
    from a host's ``GET .../ovf-store/info`` answer; None if it holds no OVF.
    A valid store whose OVFs the host could not count is as unknown, not
    as empty (its reader may refuse what an older daemon committed); so
    are stores the host is still writing (``"updating": true``): another
    writer's first archive lists no valid store until it is committed."""
    if info.get("updating") is True:
        return (f"host {host} is still writing an OVF store of domain {sd} (another "
                "update); this engine tries again later")
    valid = [s for s in info.get("stores", []) if isinstance(s, dict) and s.get("valid")]
    uncounted = [s for s in valid
                 if not isinstance(s.get("ovfs"), int) or isinstance(s["ovfs"], bool)]
    if uncounted:
        why = uncounted[0].get("entries_error") or "no count given"
        return (f"domain {sd} holds a valid OVF store whose OVFs host {host} could not "
                f"count ({why}); check it, or import it with 'sluice-engine domain import "
                f"{sd}', before this engine replaces it")
    held = [s for s in valid if s["ovfs"] > 0]
    if not held:
        return None
    newest = max(held, key=lambda s: int(s.get("record", {}).get("generation", 0)))
    n = newest["ovfs"]
    return (f"domain {sd} holds an OVF store this engine never wrote nor imported "
            f"(generation {newest.get('record', {}).get('generation')}, {n} "
            f"OVF{'s' * (n != 1)}, host {host}); run 'sluice-engine domain import {sd}' "
            "first, so that they are kept")


def copies_missing(sd: str, generation: int, info: Mapping[str, Any]) -> str | None:
    """Why the stores of ``sd`` need this engine's archive pushed again,
    from a host's ``GET .../ovf-store/info``; None if every store holds it.

    A push is answered once one store is committed; the copies into the
    others come after.  A copy cut off (the daemon killed, a failed write)
    leaves that store marked updating or holding an older generation, and
    nothing would rewrite it until the domain's next change: one good copy
    where the domain should have N.  Pushing the same archive again
    restores them.  A newer generation than this engine's is another
    writer's: not this engine's to repair.  Neither are stores the host
    says it is still updating (``"updating": true``: copies slower than its
    wait): the next look tells.
    """
    if info.get("updating") is True:
        return None
    stores = [s for s in info.get("stores", []) if isinstance(s, dict)]
    if not stores:
        return None

    def generation_of(s: Mapping[str, Any]) -> int | None:
        record = s.get("record")
        g = record.get("generation") if isinstance(record, dict) else None
        return g if s.get("valid") and isinstance(g, int) and not isinstance(g, bool) else None

    found = [generation_of(s) for s in stores]
    newest = max((g for g in found if g is not None), default=None)
    if newest is not None and newest > generation:
        return None
    short = [f"store {s.get('index', n)} "
             + ("is not valid" + (f" ({s['error']})" if s.get("error") else "")
                if g is None else f"holds generation {g}")
             for n, (s, g) in enumerate(zip(stores, found, strict=True)) if g != generation]
    if not short:
        return None
    return (f"{'; '.join(short)}, not generation {generation} this engine pushed to "
            f"domain {sd}")
