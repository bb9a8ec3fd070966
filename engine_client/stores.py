"""The domains' OVF store states in the cache, and the OVF bytes: the SQL.

Like ``entities``, every function takes the connection of an open
transaction; ``Cache`` runs each in one.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Sequence

from . import decide, entities
from .errors import NotFound
from .model import Member, Store, StoreContent
from .ovf import EXTERNAL_ORIGIN

log = logging.getLogger(__name__)


def group(c: sqlite3.Connection, table: str, key: str, value: str) -> dict[str, list[str]]:
    """``{key: [value, ...]}`` of a two-column link table, values in order."""
    found: dict[str, list[str]] = {}
    for r in c.execute(f"SELECT {key}, {value} FROM {table} ORDER BY {value}"):
        found.setdefault(r[0], []).append(r[1])
    return found


def _store(row: sqlite3.Row, stored: Iterable[str]) -> Store:
    return Store(row["sd_uuid"], bool(row["outdated"]), row["outdated_seq"],
                 row["generation"], row["last_updated"], frozenset(stored), row["digest"],
                 row["tar_length"], row["host"], row["failures"], row["next_attempt"],
                 row["last_error"], bool(row["claimed"]))


def all_stores(c: sqlite3.Connection) -> list[Store]:
    stored = group(c, "store_entities", "sd_uuid", "entity_uuid")
    return [_store(r, stored.get(r["sd_uuid"], ()))
            for r in c.execute("SELECT * FROM ovf_stores ORDER BY sd_uuid")]


def one(c: sqlite3.Connection, sd_uuid: str) -> Store:
    row = c.execute("SELECT * FROM ovf_stores WHERE sd_uuid = ?", (sd_uuid,)).fetchone()
    if row is None:
        raise NotFound(f"storage domain {sd_uuid} has no OVF store state")
    ids = c.execute("SELECT entity_uuid FROM store_entities WHERE sd_uuid = ?", (sd_uuid,))
    return _store(row, (r[0] for r in ids))


#: ``decide.store_members`` in SQL: the cached OVFs a store of ``:sd``
#: holds (an active non-shareable disk there, or no active non-shareable
#: disk anywhere: see ``decide.anchors``; never an external VM), with what
#: ``decide.reports_status`` needs.
#: test_cache.py checks both agree.  The entities are found from the
#: domain's disks (and those with none that counts) by rowid, then read in UUID order:
#: a scan of every entity in UUID order read their rows at random, and
#: took twice as long (10,000 VMs on 4 domains: 0.09-0.12 s, now 0.05).
_MEMBERS = """
SELECT e.uuid, b.size, e.ovf_digest, e.kind, e.status FROM entities e
JOIN blobs b ON b.digest = e.ovf_digest
WHERE e.origin IS NOT :external AND e.rowid IN (
    SELECT x.rowid FROM disks d JOIN entities x ON x.uuid = d.entity_uuid
    WHERE d.sd_uuid = :sd AND d.active AND NOT d.shareable
    UNION ALL
    SELECT x.rowid FROM entities x
    WHERE NOT EXISTS (SELECT 1 FROM disks d WHERE d.entity_uuid = x.uuid
                      AND d.active AND NOT d.shareable))
ORDER BY e.uuid
"""


#: The OVFs a domain import held for the store (see schema._V2), unless
#: their entity has come into the cache since.
_HELD = """
SELECT h.entity_uuid, b.size, h.digest FROM held_ovfs h JOIN blobs b ON b.digest = h.digest
WHERE h.sd_uuid = ? AND NOT EXISTS (SELECT 1 FROM entities e WHERE e.uuid = h.entity_uuid)
ORDER BY h.entity_uuid
"""


def hold(c: sqlite3.Connection, sd_uuid: str, held: Iterable[tuple[str, str, str]]) -> None:
    """Keep (entity UUID, blob digest, why) OVFs in the store of ``sd_uuid``."""
    c.executemany("INSERT OR REPLACE INTO held_ovfs VALUES (?, ?, ?, ?)",
                  [(sd_uuid, e, d, why) for e, d, why in held])


def _exists(c: sqlite3.Connection, sd_uuid: str) -> bool:
    return c.execute("SELECT 1 FROM ovf_stores WHERE sd_uuid = ?", (sd_uuid,)).fetchone() \
        is not None


def _seq(c: sqlite3.Connection, sd_uuid: str) -> tuple[int, bool]:
    row = c.execute("SELECT outdated_seq, outdated FROM ovf_stores WHERE sd_uuid = ?",
                    (sd_uuid,)).fetchone()
    if row is None:
        raise NotFound(f"storage domain {sd_uuid} has no OVF store state")
    return row[0], bool(row[1])


def content(c: sqlite3.Connection, sd_uuid: str) -> StoreContent:
    """What the store of ``sd_uuid`` must hold now, with its mark sequence,
    for a push about to start.

    Read row by row into named tuples: about 250 bytes an OVF, where whole
    entities and their disks took ten times that.  The members count as
    possibly on storage from now on (the push may land whatever happens to
    the engine): an entity deleted while it is pushed then has this domain
    rewritten too.
    """
    seq, _ = _seq(c, sd_uuid)
    members = []
    status = {}
    cur = c.cursor()
    cur.row_factory = None
    for uuid, size, digest, kind, vm_status in cur.execute(
            _MEMBERS, {"sd": sd_uuid, "external": EXTERNAL_ORIGIN}):
        members.append(Member(uuid, size, digest))
        if decide.reports_status(kind, vm_status):
            status[uuid] = vm_status
    members += (Member(*r) for r in cur.execute(_HELD, (sd_uuid,)))
    c.executemany("INSERT OR IGNORE INTO store_entities VALUES (?, ?)",
                  [(sd_uuid, m.uuid) for m in members])
    return StoreContent(sd_uuid, seq, tuple(members), status)


def read_blobs(c: sqlite3.Connection, digests: Sequence[str]) -> dict[str, bytes]:
    marks = ",".join("?" * len(digests))
    rows = c.execute(f"SELECT digest, data FROM blobs WHERE digest IN ({marks})", list(digests))
    return {r[0]: bytes(r[1]) for r in rows}


def pushed(c: sqlite3.Connection, content: StoreContent, generation: int, digest: str,
           tar_length: int, host: str, when: float, started: float) -> bool:
    """Record a verified push that started at ``started``; True if the store
    is now up to date.

    It stays outdated when something marked it after ``content`` was read:
    the host holds what was pushed, not what the store needs now.  Its
    failures and retry time stay then, for the updater to back off.
    """
    sd = content.sd_uuid
    if not _exists(c, sd):  # the domain left the pool (a detach) during the push
        return False
    known, last = c.execute("SELECT generation, last_updated FROM ovf_stores "
                            "WHERE sd_uuid = ?", (sd,)).fetchone()
    if known is not None and generation < known:
        if last is not None and last >= started:
            # Two pushes answered out of order: the newer one, recorded
            # while this one was on its way, is on storage.
            return not _seq(c, sd)[1]
        # The generation was recorded before this push began: the stores
        # themselves went back (a storage snapshot or backup restored), and
        # the host's answer is what they hold now.  Taking the old one for
        # the newest had every push since called "superseded", and pushed
        # again every second until the host's count caught up.
        log.warning("the OVF stores of domain %s went back in generation: host %s wrote "
                    "generation %d after generation %d (restored from a snapshot or a "
                    "backup?)", sd, host, generation, known)
    c.execute("UPDATE ovf_stores SET generation = :generation, last_updated = :when, "
              "digest = :digest, tar_length = :tar_length, host = :host, "
              "failures = CASE WHEN outdated_seq = :seq THEN 0 ELSE failures END, "
              "next_attempt = CASE WHEN outdated_seq = :seq THEN 0 ELSE next_attempt END, "
              "last_error = CASE WHEN outdated_seq = :seq THEN NULL ELSE last_error END, "
              "outdated = CASE WHEN outdated_seq = :seq THEN 0 ELSE 1 END WHERE sd_uuid = :sd",
              {"generation": generation, "when": when, "digest": digest,
               "tar_length": tar_length, "host": host, "seq": content.outdated_seq, "sd": sd})
    # Only the difference: a push mostly lists what the store listed (and
    # ``content`` added them all already), and rewriting every row put
    # megabytes into the WAL on each pass.
    members = {m.uuid for m in content.members}
    listed = {u for (u,) in c.execute(
        "SELECT entity_uuid FROM store_entities WHERE sd_uuid = ?", (sd,))}
    c.executemany("DELETE FROM store_entities WHERE sd_uuid = ? AND entity_uuid = ?",
                  [(sd, u) for u in sorted(listed - members)])
    c.executemany("INSERT INTO store_entities VALUES (?, ?)",
                  [(sd, u) for u in sorted(members - listed)])
    return not _seq(c, sd)[1]


def imported(c: sqlite3.Connection, sd_uuid: str, generation: int, digest: str,
             tar_length: int, host: str, listed: Iterable[str]) -> None:
    """Record a store read by ``domain import``: this engine knows it now
    (the updater may replace it), it lists ``listed``, and it is outdated,
    so the next pass writes what the cache holds, the imported ones too."""
    c.execute("UPDATE ovf_stores SET generation = COALESCE(generation, ?), "
              "digest = COALESCE(digest, ?), tar_length = COALESCE(tar_length, ?), "
              "host = COALESCE(host, ?), claimed = 1 WHERE sd_uuid = ?",
              (generation, digest, tar_length, host, sd_uuid))
    c.executemany("INSERT OR IGNORE INTO store_entities VALUES (?, ?)",
                  [(sd_uuid, e) for e in listed])
    c.execute("DELETE FROM held_ovfs WHERE entity_uuid IN (SELECT uuid FROM entities)")
    entities.mark(c, [sd_uuid])


def claim(c: sqlite3.Connection, sd_uuid: str) -> None:
    c.execute("UPDATE ovf_stores SET claimed = 1 WHERE sd_uuid = ?", (sd_uuid,))


def failed(c: sqlite3.Connection, content: StoreContent, error: str, retry_at: float) -> None:
    """Record a failed push; the store stays outdated.

    The entities the store may hold now include those of the attempt: a host
    may have written the store before its answer got lost, and a later change
    of any of them must mark this domain.
    """
    if not _exists(c, content.sd_uuid):  # the domain left the pool meanwhile
        return
    c.execute("UPDATE ovf_stores SET failures = failures + 1, next_attempt = ?, "
              "last_error = ? WHERE sd_uuid = ?", (retry_at, error, content.sd_uuid))
    c.executemany("INSERT OR IGNORE INTO store_entities VALUES (?, ?)",
                  [(content.sd_uuid, m.uuid) for m in content.members])
