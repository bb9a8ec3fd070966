"""The engine cache: what the engine knows about VMs, disks, domains and hosts.

A typed API over the SQLite file of ``schema.py``.  Every method is one
transaction, so the command line and a running updater (another process,
or threads of this one) can use the same cache at once.  The methods block:
async code calls them through ``asyncio.to_thread``.

The updater's side (processing entities, store contents, push results) is
here too.  The SQL of entities and of stores is in ``entities`` and
``stores``; the rules they apply are in ``decide``.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from stream.wire.poolmap import DOMAIN_TYPES, OVF_WRITABLE

from . import entities, phase, pooldomains, stores
from .entities import Imported, ImportItem
from .errors import InvalidInput, NotFound
from .model import (
    Disk,
    Domain,
    DomainStatus,
    Entity,
    Host,
    HostSync,
    Pool,
    Snapshot,
    Store,
    StoreContent,
)
from .ovf import canonical_uuid
from .phase import Outcome
from .schema import connect, transaction


def _domain(row: sqlite3.Row) -> Domain:
    return Domain(row["uuid"], row["type"], tuple(json.loads(row["location"])),
                  DomainStatus(row["status"]))


class Cache:
    def __init__(self, conn: sqlite3.Connection, state_dir: str) -> None:
        conn.row_factory = sqlite3.Row
        self._conn = conn
        self._lock = threading.RLock()
        self.state_dir = state_dir

    @classmethod
    def open(cls, state_dir: str) -> Cache:
        return cls(connect(state_dir), state_dir)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock, transaction(self._conn, write) as c:
            yield c

    # -- the pool map

    def pool(self) -> Pool:
        with self._tx(write=False) as c:
            row = c.execute("SELECT * FROM pool").fetchone()
        return Pool(row["pool_id"], row["map_version"], row["master_domain"])

    @staticmethod
    def _bump_map(c: sqlite3.Connection) -> None:
        c.execute("UPDATE pool SET map_version = map_version + 1")

    def bump_map_version(self, above: int = 0) -> int:
        """Make the map version grow, past ``above`` too; returns the new one."""
        with self._tx() as c:
            c.execute("UPDATE pool SET map_version = MAX(map_version + 1, ? + 1)", (above,))
            version: int = c.execute("SELECT map_version FROM pool").fetchone()[0]
        return version

    def host_map(self, host: str) -> dict[str, Any]:
        """The map ``host`` must have: the pool with the domains it serves."""
        with self._tx(write=False) as c:
            pool = c.execute("SELECT * FROM pool").fetchone()
            rows = c.execute(
                "SELECT d.* FROM domains d JOIN host_domains h ON h.sd_uuid = d.uuid "
                "WHERE h.host = ? ORDER BY d.uuid", (host,)).fetchall()
        domains = {r["uuid"]: _domain(r).to_json() for r in rows}
        master = pool["master_domain"] if pool["master_domain"] in domains else None
        return {"pool_id": pool["pool_id"], "map_version": pool["map_version"],
                "master_domain": master, "domains": domains}

    # -- domains and hosts

    def add_domain(self, sd_uuid: str, type: str, location: Sequence[str],
                   status: DomainStatus = DomainStatus.ACTIVE,
                   hosts: Sequence[str] = ()) -> Domain:
        sd = canonical_uuid(sd_uuid, "storage domain")
        if type not in DOMAIN_TYPES:
            raise InvalidInput(f"a domain's type is 'file' or 'block', not {type!r}")
        if not location or not all(p.startswith("/") for p in location):
            raise InvalidInput(f"domain {sd}: the location must be absolute paths")
        if type == "file" and len(location) != 1:
            raise InvalidInput(f"domain {sd}: a file domain has exactly one directory")
        with self._tx() as c:
            if c.execute("SELECT 1 FROM domains WHERE uuid = ?", (sd,)).fetchone():
                raise InvalidInput(f"storage domain {sd} already exists")
            c.execute("INSERT INTO domains VALUES (?, ?, ?, ?)",
                      (sd, type, json.dumps(list(location)), str(status)))
            c.execute("INSERT INTO ovf_stores (sd_uuid) VALUES (?)", (sd,))
            for h in hosts:
                self._require_host(c, h)
                c.execute("INSERT INTO host_domains VALUES (?, ?)", (h, sd))
            c.execute("UPDATE pool SET master_domain = ? WHERE master_domain IS NULL", (sd,))
            self._bump_map(c)
        return Domain(sd, type, tuple(location), status)

    def set_domain_status(self, sd_uuid: str, status: DomainStatus) -> Domain:
        with self._tx() as c:
            old = self._domain_row(c, sd_uuid)
            if old.status != status:
                c.execute("UPDATE domains SET status = ? WHERE uuid = ?", (str(status), old.uuid))
                self._bump_map(c)
                if status in OVF_WRITABLE:
                    # Diskless entities belong to every Active domain, and a
                    # domain about to leave gets its stores refreshed first.
                    entities.mark(c, [old.uuid])
        return Domain(old.uuid, old.type, old.location, status)

    def mark_outdated(self, sd_uuid: str) -> None:
        """Have the next pass rewrite the domain's store (a flow's refresh)."""
        with self._tx() as c:
            entities.mark(c, [self._domain_row(c, sd_uuid).uuid])

    def detach_refusal(self, sd_uuid: str) -> str | None:
        """Why the domain cannot leave the pool with its VMs, or None."""
        with self._tx(write=False) as c:
            return pooldomains.detach_refusal(c, self._domain_row(c, sd_uuid).uuid)

    def detach_domain(self, sd_uuid: str) -> list[str]:
        """Take a domain out of the pool with its VMs; see ``pooldomains.detach``."""
        with self._tx() as c:
            return pooldomains.detach(c, self._domain_row(c, sd_uuid).uuid)

    def hand_over_master(self, sd_uuid: str) -> str | None:
        """Move the master role off a leaving domain; see ``pooldomains``."""
        with self._tx() as c:
            return pooldomains.hand_over_master(c, self._domain_row(c, sd_uuid).uuid)

    def _domain_row(self, c: sqlite3.Connection, sd_uuid: str) -> Domain:
        sd = canonical_uuid(sd_uuid, "storage domain")
        row = c.execute("SELECT * FROM domains WHERE uuid = ?", (sd,)).fetchone()
        if row is None:
            raise NotFound(f"storage domain {sd} is not known; add it with "
                           "'sluice-engine domain add'")
        return _domain(row)

    def domain(self, sd_uuid: str) -> Domain:
        with self._tx(write=False) as c:
            return self._domain_row(c, sd_uuid)

    def domains(self) -> list[Domain]:
        with self._tx(write=False) as c:
            return [_domain(r) for r in c.execute("SELECT * FROM domains ORDER BY uuid")]

    @staticmethod
    def _require_host(c: sqlite3.Connection, name: str) -> None:
        if not c.execute("SELECT 1 FROM hosts WHERE name = ?", (name,)).fetchone():
            raise NotFound(f"host {name!r} is not known; add it with 'sluice-engine host add'")

    def add_host(self, name: str, url: str, token: str, domains: Sequence[str] = ()) -> Host:
        """Add a host, or change an existing one's URL, token and domains."""
        if not name or not name.isprintable() or " " in name:
            raise InvalidInput(f"a host name is one printable word, not {name!r}")
        if not url.startswith(("http://", "https://")):
            raise InvalidInput(f"host {name}: the URL must be http:// or https://, not {url!r}")
        if not token.strip():
            raise InvalidInput(f"host {name}: the engine token is empty")
        with self._tx() as c:
            sds = [self._domain_row(c, sd).uuid for sd in domains]
            c.execute("INSERT INTO hosts VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE "
                      "SET url = excluded.url, token = excluded.token",
                      (name, url.rstrip("/"), token.strip()))
            c.execute("DELETE FROM host_domains WHERE host = ?", (name,))
            c.executemany("INSERT OR IGNORE INTO host_domains VALUES (?, ?)",
                          [(name, sd) for sd in sds])
            self._bump_map(c)
        return Host(name, url.rstrip("/"), token.strip(), tuple(sorted(set(sds))))

    def hosts(self) -> list[Host]:
        with self._tx(write=False) as c:
            served = stores.group(c, "host_domains", "host", "sd_uuid")
            return [Host(r["name"], r["url"], r["token"], tuple(served.get(r["name"], ())))
                    for r in c.execute("SELECT * FROM hosts ORDER BY name")]

    def host(self, name: str) -> Host:
        for h in self.hosts():
            if h.name == name:
                return h
        raise NotFound(f"host {name!r} is not known; add it with 'sluice-engine host add'")

    # -- OVF stores

    def stores(self) -> list[Store]:
        with self._tx(write=False) as c:
            return stores.all_stores(c)

    def store(self, sd_uuid: str) -> Store:
        with self._tx(write=False) as c:
            return stores.one(c, sd_uuid)

    def store_content(self, sd_uuid: str) -> StoreContent:
        """What the store of ``sd_uuid`` must hold now (one consistent read)."""
        with self._tx(write=False) as c:
            return stores.content(c, sd_uuid)

    def read_blobs(self, digests: Sequence[str]) -> dict[str, bytes]:
        with self._tx(write=False) as c:
            return stores.read_blobs(c, digests)

    def store_pushed(self, content: StoreContent, generation: int, digest: str,
                     tar_length: int, host: str, when: float) -> bool:
        """Record a verified push; True if the store is now up to date (see stores)."""
        with self._tx() as c:
            return stores.pushed(c, content, generation, digest, tar_length, host, when)

    def store_failed(self, content: StoreContent, error: str, retry_at: float) -> None:
        """Record a failed push: the store stays outdated (see stores)."""
        with self._tx() as c:
            stores.failed(c, content, error, retry_at)

    # -- the pool sync's records

    def host_sync(self, host: str) -> HostSync:
        with self._tx(write=False) as c:
            r = c.execute("SELECT * FROM host_sync WHERE host = ?", (host,)).fetchone()
        if r is None:
            return HostSync(host, None, None, None, None, None, None)
        return HostSync(host, r["pushed_version"], r["last_push"], r["last_resend"],
                        r["last_error"], json.loads(r["stats"]) if r["stats"] else None,
                        r["stats_time"])

    def record_sync(self, host: str, **fields: Any) -> None:
        """Update some of ``HostSync``'s fields of ``host`` (stats as a dict)."""
        if "stats" in fields and fields["stats"] is not None:
            fields["stats"] = json.dumps(fields["stats"])
        allowed = {"pushed_version", "last_push", "last_resend", "last_error", "stats",
                   "stats_time"}
        if not fields or set(fields) - allowed:
            raise ValueError(f"bad host_sync fields {sorted(fields)}")
        names = sorted(fields)
        with self._tx() as c:
            c.execute("INSERT OR IGNORE INTO host_sync (host) VALUES (?)", (host,))
            c.execute(f"UPDATE host_sync SET {', '.join(n + ' = ?' for n in names)} "
                      "WHERE host = ?", [fields[n] for n in names] + [host])

    def host_reports(self) -> dict[str, dict[str, Any]]:
        """Each host's last ``GET /stats`` answer, for choosing where to push."""
        with self._tx(write=False) as c:
            rows = c.execute("SELECT host, stats FROM host_sync WHERE stats IS NOT NULL")
            return {r["host"]: json.loads(r["stats"]) for r in rows}

    # -- VMs and templates

    def import_entities(self, items: Sequence[ImportItem], default_domain: str | None = None,
                        disk_domains: Mapping[str, str] | None = None) -> list[Imported]:
        """Add or update entities from parsed OVFs: all of them, or none on error."""
        with self._tx() as c:
            return entities.import_items(c, items, default_domain, disk_domains or {})

    def entities(self) -> list[Entity]:
        with self._tx(write=False) as c:
            return entities.entity_rows(c)

    def entity(self, entity_uuid: str) -> Entity:
        with self._tx(write=False) as c:
            return entities.get(c, entity_uuid)

    def disks(self, entity_uuid: str | None = None) -> list[Disk]:
        with self._tx(write=False) as c:
            found = entities.disks_by_entity(c, entity_uuid)
        return [d for uuid in sorted(found) for d in found[uuid]]

    def snapshots(self, entity_uuid: str | None = None) -> list[Snapshot]:
        with self._tx(write=False) as c:
            return entities.snapshots(c, entity_uuid)

    def ovf(self, entity_uuid: str, cached: bool = False) -> bytes | None:
        """The entity's current OVF, or with ``cached`` the one stores get."""
        with self._tx(write=False) as c:
            e = entities.get(c, entity_uuid)
            digest = e.ovf_digest if cached else e.source_digest
            return None if digest is None else entities.blob(c, digest)

    def set_disk(self, entity_uuid: str, disk_uuid: str, sd_uuid: str | None = None,
                 shareable: bool | None = None, active: bool | None = None) -> Disk:
        with self._tx() as c:
            return entities.set_disk(c, entity_uuid, disk_uuid, sd_uuid, shareable, active)

    def set_locked(self, entity_uuid: str, locked: bool, disk: str | None = None,
                   snapshot: str | None = None) -> None:
        with self._tx() as c:
            entities.set_locked(c, entity_uuid, locked, disk, snapshot)

    def set_status(self, entity_uuid: str, status: int) -> None:
        with self._tx() as c:
            entities.set_status(c, entity_uuid, status)

    def delete_entity(self, entity_uuid: str) -> list[str]:
        with self._tx() as c:
            return entities.delete(c, entity_uuid)

    # -- the updater's entity phase

    def outdated_entities(self, after: str, limit: int) -> list[tuple[str, int]]:
        """The next chunk after entity ``after`` ("" at first); see ``phase.outdated``."""
        with self._tx(write=False) as c:
            return phase.outdated(c, after, limit)

    def process_entities(self, selected: Sequence[tuple[str, int]]) -> list[Outcome]:
        with self._tx() as c:
            return phase.process(c, selected)

    def process_deletions(self) -> list[tuple[str, list[str]]]:
        with self._tx() as c:
            return phase.process_deletions(c)

    def gc_blobs(self) -> int:
        with self._tx() as c:
            return phase.gc_blobs(c)
