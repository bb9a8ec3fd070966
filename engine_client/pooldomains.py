"""A domain leaving the pool, in the cache: the SQL of a detach and of
moving the master role.

Like ``entities`` and ``stores``, every function takes the connection of
an open transaction; ``Cache`` runs each in one.  oVirt's detach removes
from its database the VMs and templates that live on the domain: their
OVFs stay in the domain's (just refreshed) store, from which they are
imported when the domain is attached again.  An entity with disks on this
domain and on another cannot be split that way, and is refused, as oVirt
refuses it.
"""

from __future__ import annotations

import sqlite3

from . import entities
from .errors import InvalidInput
from .model import DomainStatus


def _entities_on(c: sqlite3.Connection, sd: str) -> list[str]:
    return [r[0] for r in c.execute(
        "SELECT DISTINCT entity_uuid FROM disks WHERE sd_uuid = ? ORDER BY entity_uuid", (sd,))]


def _spread(c: sqlite3.Connection, sd: str) -> list[tuple[str, str]]:
    """(entity, other domain) of the entities with disks here and elsewhere."""
    return [(r[0], r[1]) for r in c.execute(
        "SELECT DISTINCT d.entity_uuid, o.sd_uuid FROM disks d JOIN disks o "
        "ON o.entity_uuid = d.entity_uuid AND o.sd_uuid != d.sd_uuid "
        "WHERE d.sd_uuid = ? ORDER BY d.entity_uuid, o.sd_uuid", (sd,))]


def detach_refusal(c: sqlite3.Connection, sd: str) -> str | None:
    """Why ``sd`` cannot leave the pool with its VMs, or None."""
    spread = _spread(c, sd)
    if not spread:
        return None
    entity, other = spread[0]
    count = len({e for e, _ in spread})
    return (f"storage domain {sd} cannot be detached: {count} VMs or templates have disks "
            f"on it and on other domains (the first, {entity}, also on {other}); move "
            "their disks first")


def detach(c: sqlite3.Connection, sd: str) -> list[str]:
    """Take domain ``sd`` out of the pool; return the entities dropped with it.

    Other stores that still list a dropped entity (it lived there once)
    are marked outdated, so the next pass takes it out of them.  No deletion
    is recorded: the entity is not deleted, it left with its domain.
    """
    refusal = detach_refusal(c, sd)
    if refusal is not None:
        raise InvalidInput(refusal)
    dropped = _entities_on(c, sd)
    listed = {r[0] for e in dropped for r in c.execute(
        "SELECT sd_uuid FROM store_entities WHERE entity_uuid = ? AND sd_uuid != ?", (e, sd))}
    c.executemany("DELETE FROM entities WHERE uuid = ?", [(e,) for e in dropped])
    c.executemany("DELETE FROM store_entities WHERE entity_uuid = ?", [(e,) for e in dropped])
    c.execute("DELETE FROM host_domains WHERE sd_uuid = ?", (sd,))
    c.execute("DELETE FROM domains WHERE uuid = ?", (sd,))  # its store state cascades
    entities.mark(c, listed)
    master = c.execute("SELECT master_domain FROM pool").fetchone()[0]
    if master == sd:
        c.execute("UPDATE pool SET master_domain = ?", (next_master(c, sd),))
    c.execute("UPDATE pool SET map_version = map_version + 1")
    return dropped


def next_master(c: sqlite3.Connection, leaving: str) -> str | None:
    """The domain to take the master role from ``leaving``: an Active one
    (the first by UUID), else any other, else none."""
    row = c.execute(
        "SELECT uuid FROM domains WHERE uuid != ? ORDER BY status != ?, uuid LIMIT 1",
        (leaving, str(DomainStatus.ACTIVE))).fetchone()
    return row[0] if row else None


def hand_over_master(c: sqlite3.Connection, leaving: str) -> str | None:
    """If ``leaving`` is the master and an Active domain exists, make that
    one the master (oVirt's reconstruct, minus the storage side: hosts keep
    no pool metadata).  Returns the new master, or None if unchanged."""
    master = c.execute("SELECT master_domain FROM pool").fetchone()[0]
    if master != leaving:
        return None
    row = c.execute("SELECT uuid FROM domains WHERE uuid != ? AND status = ? ORDER BY uuid "
                    "LIMIT 1", (leaving, str(DomainStatus.ACTIVE))).fetchone()
    if row is None:
        return None
    c.execute("UPDATE pool SET master_domain = ?, map_version = map_version + 1", (row[0],))
    return str(row[0])
