"""VMs and templates in the cache, with their disks and snapshots: the SQL.

Every function takes the connection of an open transaction; ``Cache`` runs
each in one.  The OVF the engine has now (``source_digest``) and the cached
one that goes into stores (``ovf_digest``) are both kept by content in
``blobs``, so a push always reads the bytes it planned.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import xxhash

from .errors import InvalidInput, NotFound
from .model import SNAPSHOT_LOCKED, SNAPSHOT_OK, Disk, Entity, Snapshot, VmStatus
from .ovf import Ovf, canonical_uuid
from .ovfedit import set_shareable, set_storage_ids

SELECT = ("SELECT e.*, b.size AS ovf_size FROM entities e "
           "LEFT JOIN blobs b ON b.digest = e.ovf_digest")


@dataclass(frozen=True)
class ImportItem:
    source: str  # the file name, for messages
    ovf: Ovf
    data: bytes


@dataclass(frozen=True)
class Imported:
    uuid: str
    name: str
    kind: str
    source: str
    action: str  # "added", "changed" or "unchanged"
    db_generation: int


def row_entity(r: sqlite3.Row) -> Entity:
    return Entity(r["uuid"], r["name"], r["kind"], r["status"], r["origin"],
                  r["db_generation"], r["ovf_generation"], r["source_digest"],
                  r["ovf_digest"], r["ovf_size"])


def entity_rows(c: sqlite3.Connection, where: str = "", params: Sequence[object] = (),
                limit: int = -1) -> list[Entity]:
    """Entities matching ``where`` (SQL on ``e``), in UUID order."""
    sql = f"{SELECT} {where} ORDER BY e.uuid LIMIT ?"
    return [row_entity(r) for r in c.execute(sql, (*params, limit))]


def resolve(c: sqlite3.Connection, ref: str) -> str:
    """The UUID of the VM or template ``ref`` names: a known UUID, else the
    one entity of that name (a name may look like a UUID: 32 hex digits
    are a valid oVirt name), else ``ref`` as a UUID if it is one (callers
    then say it is not known).  NotFound if nothing matches, InvalidInput
    if several have the name: oVirt keeps names unique, an import from
    elsewhere may not."""
    try:
        uuid = canonical_uuid(ref, "VM")
    except InvalidInput:
        uuid = None
    if uuid is not None and c.execute("SELECT 1 FROM entities WHERE uuid = ?",
                                      (uuid,)).fetchone():
        return uuid
    found = [str(r[0]) for r in c.execute(
        "SELECT uuid FROM entities WHERE name = ? ORDER BY uuid", (ref,))]
    if not found and uuid is not None:
        return uuid  # not known: the caller says so, naming the UUID
    if not found:
        raise NotFound(f"no VM or template is named {ref!r}")
    if len(found) > 1:
        raise InvalidInput(f"{len(found)} VMs or templates are named {ref!r}; give one's "
                           f"UUID ({', '.join(found)})")
    return found[0]


def get(c: sqlite3.Connection, entity_uuid: str) -> Entity:
    uuid = canonical_uuid(entity_uuid, "VM")
    found = entity_rows(c, "WHERE e.uuid = ?", (uuid,))
    if not found:
        raise NotFound(f"VM or template {uuid} is not known")
    return found[0]


def disks_by_entity(c: sqlite3.Connection, entity: str | None = None) -> dict[str, list[Disk]]:
    where, params = ("WHERE entity_uuid = ?", (entity,)) if entity else ("", ())
    found: dict[str, list[Disk]] = {}
    for r in c.execute(f"SELECT * FROM disks {where} ORDER BY disk_uuid", params):
        found.setdefault(r["entity_uuid"], []).append(Disk(
            r["entity_uuid"], r["disk_uuid"], r["sd_uuid"], bool(r["shareable"]),
            bool(r["active"]), bool(r["locked"])))
    return found


def snapshots(c: sqlite3.Connection, entity: str | None = None) -> list[Snapshot]:
    where, params = ("WHERE entity_uuid = ?", (entity,)) if entity else ("", ())
    return [Snapshot(r["entity_uuid"], r["uuid"], r["type"], r["status"]) for r in
            c.execute(f"SELECT * FROM snapshots {where} ORDER BY entity_uuid, uuid", params)]


def mark(c: sqlite3.Connection, sds: Iterable[str]) -> None:
    """Mark the stores of ``sds`` outdated (unknown domains are ignored)."""
    c.executemany("UPDATE ovf_stores SET outdated = 1, outdated_seq = outdated_seq + 1 "
                  "WHERE sd_uuid = ?", [(sd,) for sd in sorted(set(sds))])


def _listed_in(c: sqlite3.Connection, entity: str) -> list[str]:
    return [r[0] for r in c.execute(
        "SELECT sd_uuid FROM store_entities WHERE entity_uuid = ?", (entity,))]


def put_blob(c: sqlite3.Connection, data: bytes) -> str:
    digest = xxhash.xxh3_128_hexdigest(data)
    c.execute("INSERT OR IGNORE INTO blobs VALUES (?, ?, ?)", (digest, len(data), data))
    return digest


def blob(c: sqlite3.Connection, digest: str) -> bytes:
    return bytes(c.execute("SELECT data FROM blobs WHERE digest = ?", (digest,)).fetchone()[0])


def _require_domain(c: sqlite3.Connection, sd: str, what: str) -> None:
    if not c.execute("SELECT 1 FROM domains WHERE uuid = ?", (sd,)).fetchone():
        raise InvalidInput(f"{what} is on storage domain {sd}, which is not known; add it "
                           "with 'sluice-engine domain add' or place the disk elsewhere "
                           "with --disk-domain DISK=DOMAIN")


def _placement(item: ImportItem, default_domain: str | None,
               disk_domains: Mapping[str, str]) -> dict[str, str]:
    placed = {}
    for d in item.ovf.disks:
        sd = disk_domains.get(d.disk_uuid) or default_domain or d.sd_uuid
        if sd is None:
            raise InvalidInput(f"{item.source}: disk {d.disk_uuid} of {item.ovf.name} has no "
                               "storage domain (no rasd:StorageId); give one with --domain "
                               "or --disk-domain")
        placed[d.disk_uuid] = sd
    return placed


def import_items(c: sqlite3.Connection, items: Iterable[ImportItem],
                 default_domain: str | None = None,
                 disk_domains: Mapping[str, str] = {}) -> list[Imported]:
    """Add or update entities from parsed OVFs; all of them or none.

    ``items`` may be read as it goes (``importer`` reads each file again
    here, having parsed them all before), each item dropped once stored."""
    return [_import_one(c, item, default_domain, disk_domains) for item in items]


def _import_one(c: sqlite3.Connection, item: ImportItem, default_domain: str | None,
                disk_domains: Mapping[str, str]) -> Imported:
    ovf = item.ovf
    placed = _placement(item, default_domain, disk_domains)
    for disk, sd in placed.items():
        _require_domain(c, sd, f"{item.source}: disk {disk} of {ovf.kind} {ovf.name} "
                               f"({ovf.uuid})")
    moves = {d.disk_uuid: placed[d.disk_uuid] for d in ovf.disks
             if placed[d.disk_uuid] != d.sd_uuid}
    data = set_storage_ids(item.data, moves, item.source) if moves else item.data
    digest = put_blob(c, data)
    old = entity_rows(c, "WHERE e.uuid = ?", (ovf.uuid,))
    old_disks = {d.disk_uuid: d for d in disks_by_entity(c, ovf.uuid).get(ovf.uuid, [])}
    same_disks = {(d.disk_uuid, placed[d.disk_uuid], d.shareable) for d in ovf.disks} == {
        (d.disk_uuid, d.sd_uuid, d.shareable) for d in old_disks.values()}
    if not old:
        generation, action = max(1, ovf.generation or 0), "added"
        c.execute("INSERT INTO entities (uuid, name, kind, origin, db_generation, "
                  "source_digest) VALUES (?, ?, ?, ?, ?, ?)",
                  (ovf.uuid, ovf.name, ovf.kind, ovf.origin, generation, digest))
    elif (old[0].source_digest, old[0].name, old[0].kind) == (digest, ovf.name,
                                                            ovf.kind) and same_disks:
        generation, action = old[0].db_generation, "unchanged"
    else:
        generation = max(old[0].db_generation + 1, ovf.generation or 0)
        action = "changed"
        c.execute("UPDATE entities SET name = ?, kind = ?, origin = ?, db_generation = ?, "
                  "source_digest = ? WHERE uuid = ?",
                  (ovf.name, ovf.kind, ovf.origin, generation, digest, ovf.uuid))
    # In the cache now: no longer held for the stores (see schema._V2).
    c.execute("DELETE FROM held_ovfs WHERE entity_uuid = ?", (ovf.uuid,))
    c.execute("DELETE FROM disks WHERE entity_uuid = ?", (ovf.uuid,))
    # Active and locked are the engine's state, not the OVF's: a disk
    # imported again keeps them (an inactive one stays out of stores).
    c.executemany("INSERT INTO disks VALUES (?, ?, ?, ?, ?, ?)", [
        (ovf.uuid, d.disk_uuid, placed[d.disk_uuid], d.shareable,
         old_disks[d.disk_uuid].active if d.disk_uuid in old_disks else True,
         d.disk_uuid in old_disks and old_disks[d.disk_uuid].locked) for d in ovf.disks])
    old_snaps = {s.uuid: s.status for s in snapshots(c, ovf.uuid)}
    c.execute("DELETE FROM snapshots WHERE entity_uuid = ?", (ovf.uuid,))
    c.executemany("INSERT INTO snapshots VALUES (?, ?, ?, ?)", [
        (ovf.uuid, s.uuid, s.type, old_snaps.get(s.uuid, SNAPSHOT_OK))
        for s in ovf.snapshots])
    return Imported(ovf.uuid, ovf.name, ovf.kind, item.source, action, generation)


def _bump(c: sqlite3.Connection, entity: str) -> None:
    c.execute("UPDATE entities SET db_generation = db_generation + 1 WHERE uuid = ?", (entity,))


def set_disk(c: sqlite3.Connection, entity_uuid: str, disk_uuid: str, sd: str | None = None,
             shareable: bool | None = None, active: bool | None = None) -> Disk:
    """Move a disk or change its flags; the entity's generation grows if anything changed."""
    e = get(c, entity_uuid)
    disk = canonical_uuid(disk_uuid, "disk")
    old = next((d for d in disks_by_entity(c, e.uuid).get(e.uuid, []) if d.disk_uuid == disk),
               None)
    if old is None:
        raise NotFound(f"{e.kind} {e.name} ({e.uuid}) has no disk {disk}")
    new_sd = canonical_uuid(sd, "storage domain") if sd else old.sd_uuid
    new = Disk(e.uuid, disk, new_sd, old.shareable if shareable is None else shareable,
               old.active if active is None else active, old.locked)
    if new == old:
        return old
    source = blob(c, e.source_digest)
    if new_sd != old.sd_uuid:
        _require_domain(c, new_sd, f"disk {disk} of {e.kind} {e.name}")
        source = set_storage_ids(source, {disk: new_sd}, f"OVF of {e.uuid}")
    if new.shareable != old.shareable:  # the stores' OVF must say it too
        source = set_shareable(source, disk, new.shareable, f"OVF of {e.uuid}")
    if new_sd != old.sd_uuid or new.shareable != old.shareable:
        c.execute("UPDATE entities SET source_digest = ? WHERE uuid = ?",
                  (put_blob(c, source), e.uuid))
    c.execute("UPDATE disks SET sd_uuid = ?, shareable = ?, active = ? "
              "WHERE entity_uuid = ? AND disk_uuid = ?",
              (new.sd_uuid, new.shareable, new.active, e.uuid, disk))
    _bump(c, e.uuid)
    return new


def set_locked(c: sqlite3.Connection, entity_uuid: str, locked: bool,
               disk: str | None = None, snapshot: str | None = None) -> None:
    """Lock or unlock a disk, a snapshot, or else the entity itself (ImageLocked)."""
    e = get(c, entity_uuid)
    if disk is not None:
        d = canonical_uuid(disk, "disk")
        cur = c.execute("UPDATE disks SET locked = ? WHERE entity_uuid = ? AND disk_uuid = ?",
                        (locked, e.uuid, d))
        what = f"disk {d}"
    elif snapshot is not None:
        s = canonical_uuid(snapshot, "snapshot")
        cur = c.execute("UPDATE snapshots SET status = ? WHERE entity_uuid = ? AND uuid = ?",
                        (SNAPSHOT_LOCKED if locked else SNAPSHOT_OK, e.uuid, s))
        what = f"snapshot {s}"
    else:
        # Unlocking ends ImageLocked (as oVirt, Down); any other status stays.
        if locked or e.status == VmStatus.IMAGE_LOCKED:
            status = VmStatus.IMAGE_LOCKED if locked else VmStatus.DOWN
            c.execute("UPDATE entities SET status = ? WHERE uuid = ?", (int(status), e.uuid))
        return
    if cur.rowcount == 0:
        raise NotFound(f"{e.kind} {e.name} ({e.uuid}) has no {what}")


def set_status(c: sqlite3.Connection, entity_uuid: str, status: int) -> None:
    e = get(c, entity_uuid)
    c.execute("UPDATE entities SET status = ? WHERE uuid = ?", (status, e.uuid))


def delete(c: sqlite3.Connection, entity_uuid: str) -> list[str]:
    """Delete an entity; the next pass rewrites the domains that held it."""
    e = get(c, entity_uuid)
    sds = {d.sd_uuid for d in disks_by_entity(c, e.uuid).get(e.uuid, [])}
    sds.update(_listed_in(c, e.uuid))
    old = c.execute("SELECT domains FROM deletions WHERE entity_uuid = ?", (e.uuid,)).fetchone()
    if old:
        sds.update(json.loads(old[0]))
    c.execute("INSERT OR REPLACE INTO deletions VALUES (?, ?, ?)",
              (e.uuid, json.dumps(sorted(sds)), time.time()))
    c.execute("DELETE FROM entities WHERE uuid = ?", (e.uuid,))
    return sorted(sds)
