"""The updater's entity phase in the cache: the SQL.

Like ``entities``, every function takes the connection of an open
transaction; ``Cache`` runs each in one.  oVirt's rules are in ``decide``;
here they are applied a chunk of entities at a time, with a fixed number
of statements per chunk (a pass over 10,000 VMs used to run six per VM).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import decide, entities
from .model import SNAPSHOT_OK, Disk, DomainStatus, Snapshot
from .ovf import EXTERNAL_ORIGIN


@dataclass(frozen=True)
class Outcome:
    """What the updater's entity phase did with one entity."""

    uuid: str
    name: str
    kind: str
    processed: bool
    reason: str | None  # why it was skipped
    domains: tuple[str, ...]  # the domains marked outdated


def outdated(c: sqlite3.Connection, after: str, limit: int) -> list[tuple[str, int]]:
    """The next ``limit`` entities that need processing (``decide.needs_processing``
    in SQL), after the entity ``after`` ("" for the first chunk).

    In table (rowid) order, not UUID order: a chunk's rows then share a few
    pages, and committing it writes those to the WAL instead of one page per
    entity (10,000 VMs: 0.17 s instead of 0.43 s).  Should ``after`` have
    been deleted meanwhile, it starts again from the first: entities
    processed since are no longer outdated, skipped ones come again.
    """
    return [(r[0], r[1]) for r in c.execute(
        "SELECT uuid, db_generation FROM entities WHERE db_generation > ovf_generation "
        "AND origin IS NOT ? AND rowid > COALESCE((SELECT rowid FROM entities WHERE uuid = ?), 0) "
        "ORDER BY rowid LIMIT ?", (EXTERNAL_ORIGIN, after, limit))]


#: The entities as ``entities.SELECT`` reads them, but for the size of
#: their cached OVF, which this phase does not use: reading it from
#: ``blobs`` cost a leaf page per entity (10,000 VMs: 0.03 s of 0.2).
_ENTITIES = "SELECT e.*, NULL AS ovf_size FROM entities e"

#: Keys per ``IN (...)``: under SQLite's oldest limit of 999 variables.
_IN_MAX = 500


def _grouped(c: sqlite3.Connection, sql: str, keys: Sequence[str],
             params: Sequence[object] = ()) -> dict[str, list[Any]]:
    """``sql`` (with ``{keys}`` for an ``IN`` list, then ``params``) over
    ``keys`` in slices; its rows grouped by their first column, in order."""
    found: dict[str, list[Any]] = {}
    for i in range(0, len(keys), _IN_MAX):
        part = keys[i:i + _IN_MAX]
        for r in c.execute(sql.format(keys=",".join("?" * len(part))), [*part, *params]):
            found.setdefault(r[0], []).append(r)
    return found


def process(c: sqlite3.Connection, selected: Sequence[tuple[str, int]]) -> list[Outcome]:
    """The entity phase for one chunk: cache the OVF of every unlocked entity
    whose generation is still the selected one, and mark its domains.

    Set-based: one query each for the entities, their disks, their snapshots
    that are not OK and the stores listing them, then one UPDATE and one
    mark per domain, whatever the chunk size (oVirt's rules in ``decide``).
    """
    uuids = [uuid for uuid, _ in selected]
    active = [r[0] for r in c.execute("SELECT uuid FROM domains WHERE status = ?",
                                      (str(DomainStatus.ACTIVE),))]
    rows = _grouped(c, f"{_ENTITIES} WHERE e.uuid IN ({{keys}})", uuids)
    disks = {uuid: [Disk(r[0], r[1], r[2], bool(r[3]), bool(r[4]), bool(r[5])) for r in found]
             for uuid, found in _grouped(
                 c, "SELECT entity_uuid, disk_uuid, sd_uuid, shareable, active, locked FROM disks "
                    "WHERE entity_uuid IN ({keys}) ORDER BY entity_uuid, disk_uuid", uuids).items()}
    # Only snapshots that are not OK can lock an entity (decide.lock_reason).
    snaps = {uuid: [Snapshot(r[0], r[1], r[2], r[3]) for r in found] for uuid, found in _grouped(
        c, "SELECT entity_uuid, uuid, type, status FROM snapshots WHERE entity_uuid IN ({keys}) "
           "AND status != ? ORDER BY entity_uuid, uuid", uuids, [SNAPSHOT_OK]).items()}
    listed = _grouped(c, "SELECT entity_uuid, sd_uuid FROM store_entities "
                         "WHERE entity_uuid IN ({keys})", uuids)
    outcomes, done, marked = [], [], set()
    for uuid, generation in selected:
        if uuid not in rows:
            continue  # deleted meanwhile: its deletion marks the domains
        e = entities.row_entity(rows[uuid][0])
        own = disks.get(uuid, [])
        reason = decide.lock_reason(e, own, snaps.get(uuid, []))
        if reason is None and e.db_generation != generation:
            reason = "its generation moved while it was processed"
        if reason is not None:
            outcomes.append(Outcome(uuid, e.name, e.kind, False, reason, ()))
            continue
        marks = decide.domains_to_mark(own, [r[1] for r in listed.get(uuid, ())], active)
        marked |= marks
        done.append(uuid)
        outcomes.append(Outcome(uuid, e.name, e.kind, True, None, tuple(sorted(marks))))
    for i in range(0, len(done), _IN_MAX):
        part = done[i:i + _IN_MAX]
        c.execute("UPDATE entities SET ovf_digest = source_digest, ovf_generation = db_generation "
                  f"WHERE uuid IN ({','.join('?' * len(part))})", part)
    entities.mark(c, marked)
    return outcomes


def process_deletions(c: sqlite3.Connection) -> list[tuple[str, list[str]]]:
    done = []
    for r in c.execute("SELECT * FROM deletions ORDER BY entity_uuid").fetchall():
        # And the stores listing it now: a push that carried it may have
        # landed since the deletion.
        sds = sorted({*json.loads(r["domains"]), *(s for (s,) in c.execute(
            "SELECT sd_uuid FROM store_entities WHERE entity_uuid = ?", (r["entity_uuid"],)))})
        entities.mark(c, sds)
        done.append((r["entity_uuid"], sds))
    c.execute("DELETE FROM deletions")
    return done


def gc_blobs(c: sqlite3.Connection) -> int:
    """Drop OVF blobs no entity refers to any more.

    The digests come from the blobs' index: a scan of the table itself reads
    a leaf page per OVF (40 MB for 10,000), from disk when it is not cached.
    """
    return c.execute(
        "DELETE FROM blobs WHERE digest IN (SELECT digest FROM blobs "
        "EXCEPT SELECT source_digest FROM entities "
        "EXCEPT SELECT ovf_digest FROM entities WHERE ovf_digest IS NOT NULL "
        "EXCEPT SELECT digest FROM held_ovfs)"
    ).rowcount
