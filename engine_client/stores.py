"""The domains' OVF store states in the cache, and the OVF bytes: the SQL.

Like ``entities``, every function takes the connection of an open
transaction; ``Cache`` runs each in one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from . import decide, entities
from .errors import NotFound
from .model import Store, StoreContent


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
                 row["last_error"])


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


def content(c: sqlite3.Connection, sd_uuid: str) -> StoreContent:
    """What the store of ``sd_uuid`` must hold now, with its mark sequence."""
    seq = one(c, sd_uuid).outdated_seq
    cached = entities.entity_rows(c, "WHERE e.ovf_digest IS NOT NULL")
    members = decide.store_members(sd_uuid, cached, entities.disks_by_entity(c))
    return StoreContent(sd_uuid, seq, tuple(members), decide.vm_statuses(cached, members))


def read_blobs(c: sqlite3.Connection, digests: Sequence[str]) -> dict[str, bytes]:
    marks = ",".join("?" * len(digests))
    rows = c.execute(f"SELECT digest, data FROM blobs WHERE digest IN ({marks})", list(digests))
    return {r[0]: bytes(r[1]) for r in rows}


def pushed(c: sqlite3.Connection, content: StoreContent, generation: int, digest: str,
           tar_length: int, host: str, when: float) -> bool:
    """Record a verified push; True if the store is now up to date.

    It stays outdated when something marked it after ``content`` was read:
    the host holds what was pushed, not what the store needs now.
    """
    sd = content.sd_uuid
    c.execute("UPDATE ovf_stores SET generation = ?, last_updated = ?, digest = ?, "
              "tar_length = ?, host = ?, failures = 0, next_attempt = 0, last_error = NULL, "
              "outdated = CASE WHEN outdated_seq = ? THEN 0 ELSE 1 END WHERE sd_uuid = ?",
              (generation, when, digest, tar_length, host, content.outdated_seq, sd))
    c.execute("DELETE FROM store_entities WHERE sd_uuid = ?", (sd,))
    c.executemany("INSERT INTO store_entities VALUES (?, ?)",
                  [(sd, m.uuid) for m in content.members])
    return not one(c, sd).outdated


def failed(c: sqlite3.Connection, content: StoreContent, error: str, retry_at: float) -> None:
    """Record a failed push; the store stays outdated.

    The entities the store may hold now include those of the attempt: a host
    may have written the store before its answer got lost, and a later change
    of any of them must mark this domain.
    """
    c.execute("UPDATE ovf_stores SET failures = failures + 1, next_attempt = ?, "
              "last_error = ? WHERE sd_uuid = ?", (retry_at, error, content.sd_uuid))
    c.executemany("INSERT OR IGNORE INTO store_entities VALUES (?, ?)",
                  [(content.sd_uuid, m.uuid) for m in content.members])
