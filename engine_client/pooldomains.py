"""The pool in the cache: its domains and hosts, the map a host must hold,
the pool sync's records, and a domain leaving (detach, the master role).

Like ``entities`` and ``stores``, every function takes the connection of
an open transaction; ``Cache`` runs each in one.  oVirt's detach removes
from its database the VMs and templates that live on the domain: their
OVFs stay in the domain's (just refreshed) store, from which they are
imported when the domain is attached again.  An entity with disks on this
domain and on another cannot be split that way, and is refused, as oVirt
refuses it.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.parse
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from stream.wire.poolmap import DOMAIN_TYPES, OVF_WRITABLE

from . import entities
from .errors import InvalidInput, NotFound
from .model import Domain, DomainStatus, Host, HostSync
from .ovf import canonical_uuid


def bump_map(c: sqlite3.Connection) -> None:
    c.execute("UPDATE pool SET map_version = map_version + 1")


# -- domains and hosts

def domain(row: sqlite3.Row) -> Domain:
    return Domain(row["uuid"], row["type"], tuple(json.loads(row["location"])),
                  DomainStatus(row["status"]))


def domain_row(c: sqlite3.Connection, sd_uuid: str) -> Domain:
    sd = canonical_uuid(sd_uuid, "storage domain")
    row = c.execute("SELECT * FROM domains WHERE uuid = ?", (sd,)).fetchone()
    if row is None:
        raise NotFound(f"storage domain {sd} is not known; add it with "
                       "'sluice-engine domain add'")
    return domain(row)


def set_status(c: sqlite3.Connection, sd_uuid: str, status: DomainStatus,
               origin: DomainStatus | None = None) -> Domain:
    """Give the domain ``status``; ``origin``: where the flow moving it to
    a transitional status found it (kept until the status changes)."""
    old = domain_row(c, sd_uuid)
    c.execute("UPDATE domains SET status = ? WHERE uuid = ?", (str(status), old.uuid))
    if origin is not None:
        c.execute("INSERT OR REPLACE INTO domain_flows VALUES (?, ?)", (old.uuid, str(origin)))
    elif old.status != status:
        c.execute("DELETE FROM domain_flows WHERE sd_uuid = ?", (old.uuid,))
    if old.status != status:
        bump_map(c)
        if status in OVF_WRITABLE:
            # Diskless entities belong to every Active domain, and a domain
            # about to leave gets its stores refreshed first.
            entities.mark(c, [old.uuid])
    return Domain(old.uuid, old.type, old.location, status)


#: Why a domain may not go on with a flow, or None (``detach_refusal``).
Refusal = Callable[[sqlite3.Connection, str], "str | None"]


def enter_flow(c: sqlite3.Connection, sd_uuid: str, status: DomainStatus,
               starts: Collection[DomainStatus], flow: str,
               refusal: Refusal | None = None) -> DomainStatus | None:
    """Move the domain into a flow's transitional ``status`` if it is in one
    of ``starts`` and ``refusal`` has no objection (InvalidInput otherwise),
    in one transaction with the checks.  ``status`` itself is a flow cut
    short and run again: the status its first run found is kept, and
    returned (None if not known)."""
    old = domain_row(c, sd_uuid)
    if old.status not in starts:
        allowed = ", ".join(str(s) for s in starts if s != status)
        raise InvalidInput(f"storage domain {old.uuid} is {old.status}; {flow} starts "
                           f"from {allowed}")
    why = None if refusal is None else refusal(c, old.uuid)
    if why is not None:
        raise InvalidInput(why)
    if old.status == status:
        kept = c.execute("SELECT flow_from FROM domain_flows WHERE sd_uuid = ?",
                         (old.uuid,)).fetchone()
        origin = None if kept is None else DomainStatus(kept[0])
    else:
        origin = old.status
    set_status(c, old.uuid, status, origin)
    return origin


def _require_host(c: sqlite3.Connection, name: str) -> None:
    if not c.execute("SELECT 1 FROM hosts WHERE name = ?", (name,)).fetchone():
        raise NotFound(f"host {name!r} is not known; add it with 'sluice-engine host add'")


def add_domain(c: sqlite3.Connection, sd_uuid: str, type: str, location: Sequence[str],
               status: DomainStatus, hosts: Sequence[str]) -> Domain:
    sd = canonical_uuid(sd_uuid, "storage domain")
    if type not in DOMAIN_TYPES:
        raise InvalidInput(f"a domain's type is 'file' or 'block', not {type!r}")
    if not location or not all(p.startswith("/") for p in location):
        raise InvalidInput(f"domain {sd}: the location must be absolute paths")
    if type == "file" and len(location) != 1:
        raise InvalidInput(f"domain {sd}: a file domain has exactly one directory")
    if c.execute("SELECT 1 FROM domains WHERE uuid = ?", (sd,)).fetchone():
        raise InvalidInput(f"storage domain {sd} already exists")
    c.execute("INSERT INTO domains (uuid, type, location, status) VALUES (?, ?, ?, ?)",
              (sd, type, json.dumps(list(location)), str(status)))
    c.execute("INSERT INTO ovf_stores (sd_uuid) VALUES (?)", (sd,))
    for h in hosts:
        _require_host(c, h)
        c.execute("INSERT INTO host_domains VALUES (?, ?)", (h, sd))
    c.execute("UPDATE pool SET master_domain = ? WHERE master_domain IS NULL", (sd,))
    bump_map(c)
    return Domain(sd, type, tuple(location), status)


def _check_url(name: str, url: str) -> None:
    """Refuse a URL the engine routes cannot be appended to: no host, a bad
    port, or a path, query or fragment (``/info/`` is added to it as it is)."""
    try:
        parts = urllib.parse.urlsplit(url)
        ok = bool(parts.hostname) and (parts.port is None or parts.port > 0)
    except ValueError:  # a bad port or IPv6 address
        ok = False
    if not ok or parts.path not in ("", "/") or parts.query or parts.fragment \
            or "@" in parts.netloc or not url.isprintable() or " " in url:
        raise InvalidInput(f"host {name}: the URL must be http(s)://ADDRESS[:PORT] with no "
                           f"path, like http://127.0.0.1:54322, not {url!r}")


def add_host(c: sqlite3.Connection, name: str, url: str, token: str,
             domains: Sequence[str] | None) -> Host:
    """Add a host, or change an existing one's URL, token and domains;
    ``domains`` None keeps the ones it serves (a new one: none), so that
    changing its token or URL never takes its domains out of its map."""
    if not name or not name.isprintable() or " " in name:
        raise InvalidInput(f"a host name is one printable word, not {name!r}")
    if not url.startswith(("http://", "https://")):
        raise InvalidInput(f"host {name}: the URL must be http:// or https://, not {url!r}")
    _check_url(name, url)
    if not token.strip():
        raise InvalidInput(f"host {name}: the engine token is empty")
    if domains is None:
        sds = [r[0] for r in c.execute("SELECT sd_uuid FROM host_domains WHERE host = ?",
                                       (name,))]
    else:
        sds = [domain_row(c, sd).uuid for sd in domains]
    c.execute("INSERT INTO hosts VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE "
              "SET url = excluded.url, token = excluded.token",
              (name, url.rstrip("/"), token.strip()))
    c.execute("DELETE FROM host_domains WHERE host = ?", (name,))
    c.executemany("INSERT OR IGNORE INTO host_domains VALUES (?, ?)",
                  [(name, sd) for sd in sds])
    bump_map(c)
    return Host(name, url.rstrip("/"), token.strip(), tuple(sorted(set(sds))))


def host_map(c: sqlite3.Connection, host: str) -> dict[str, Any]:
    """The map ``host`` must have: the pool with the domains it serves."""
    pool = c.execute("SELECT * FROM pool").fetchone()
    rows = c.execute(
        "SELECT d.* FROM domains d JOIN host_domains h ON h.sd_uuid = d.uuid "
        "WHERE h.host = ? ORDER BY d.uuid", (host,)).fetchall()
    domains = {r["uuid"]: domain(r).to_json() for r in rows}
    master = pool["master_domain"] if pool["master_domain"] in domains else None
    return {"pool_id": pool["pool_id"], "map_version": pool["map_version"],
            "master_domain": master, "domains": domains}


# -- the pool sync's records

_SYNC_FIELDS = {"pushed_version", "last_push", "last_resend", "last_error", "stats",
                "stats_time"}


def host_sync(c: sqlite3.Connection, host: str) -> HostSync:
    r = c.execute("SELECT * FROM host_sync WHERE host = ?", (host,)).fetchone()
    if r is None:
        return HostSync(host, None, None, None, None, None, None)
    return HostSync(host, r["pushed_version"], r["last_push"], r["last_resend"],
                    r["last_error"], json.loads(r["stats"]) if r["stats"] else None,
                    r["stats_time"])


def record_sync(c: sqlite3.Connection, host: str, fields: Mapping[str, Any]) -> None:
    """Update some of ``HostSync``'s fields of ``host`` (stats as a dict)."""
    values = dict(fields)
    if values.get("stats") is not None:
        values["stats"] = json.dumps(values["stats"])
    if not values or set(values) - _SYNC_FIELDS:
        raise ValueError(f"bad host_sync fields {sorted(values)}")
    names = sorted(values)
    c.execute("INSERT OR IGNORE INTO host_sync (host) VALUES (?)", (host,))
    c.execute(f"UPDATE host_sync SET {', '.join(n + ' = ?' for n in names)} "
              "WHERE host = ?", [values[n] for n in names] + [host])


# -- a domain leaving


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
    bump_map(c)
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
