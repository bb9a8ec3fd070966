"""The engine cache: what the engine knows about VMs, disks, domains and hosts.

A typed API over the SQLite file of ``schema.py``.  Every method is one
transaction, so the command line and a running updater (another process,
or threads of this one) can use the same cache at once.  The methods block:
async code calls them through ``asyncio.to_thread``.

The updater's side (processing entities, store contents, push results) is
here too.  The SQL of entities, of stores and of the pool's domains and
hosts is in ``entities``, ``stores`` and ``pooldomains``; the rules they
apply are in ``decide``.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

from . import entities, phase, pooldomains, stores
from .entities import Imported, ImportItem
from .errors import NotFound
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
from .phase import Outcome
from .schema import connect, transaction


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

    def bump_map_version(self, above: int = 0) -> int:
        """Make the map version grow, past ``above`` too; returns the new one."""
        with self._tx() as c:
            c.execute("UPDATE pool SET map_version = MAX(map_version + 1, ? + 1)", (above,))
            version: int = c.execute("SELECT map_version FROM pool").fetchone()[0]
        return version

    def host_map(self, host: str) -> dict[str, Any]:
        """The map ``host`` must have: the pool with the domains it serves."""
        with self._tx(write=False) as c:
            return pooldomains.host_map(c, host)

    # -- domains and hosts

    def add_domain(self, sd_uuid: str, type: str, location: Sequence[str],
                   status: DomainStatus = DomainStatus.ACTIVE,
                   hosts: Sequence[str] = ()) -> Domain:
        with self._tx() as c:
            return pooldomains.add_domain(c, sd_uuid, type, location, status, hosts)

    def set_domain_status(self, sd_uuid: str, status: DomainStatus) -> Domain:
        with self._tx() as c:
            return pooldomains.set_status(c, sd_uuid, status)

    def enter_flow(self, sd_uuid: str, status: DomainStatus,
                   starts: Collection[DomainStatus], flow: str,
                   detach: bool = False) -> DomainStatus | None:
        """See ``pooldomains.enter_flow``; ``detach``: refused as
        ``detach_refusal`` says."""
        with self._tx() as c:
            return pooldomains.enter_flow(c, sd_uuid, status, starts, flow,
                                          pooldomains.detach_refusal if detach else None)

    def mark_outdated(self, sd_uuid: str) -> None:
        """Have the next pass rewrite the domain's store (a flow's refresh)."""
        with self._tx() as c:
            entities.mark(c, [self._domain_row(c, sd_uuid).uuid])

    def detach_domain(self, sd_uuid: str) -> list[str]:
        """Take a domain out of the pool with its VMs; see ``pooldomains.detach``."""
        with self._tx() as c:
            return pooldomains.detach(c, self._domain_row(c, sd_uuid).uuid)

    def hand_over_master(self, sd_uuid: str) -> str | None:
        """Move the master role off a leaving domain; see ``pooldomains``."""
        with self._tx() as c:
            return pooldomains.hand_over_master(c, self._domain_row(c, sd_uuid).uuid)

    @staticmethod
    def _domain_row(c: sqlite3.Connection, sd_uuid: str) -> Domain:
        return pooldomains.domain_row(c, sd_uuid)

    def domain(self, sd_uuid: str) -> Domain:
        with self._tx(write=False) as c:
            return self._domain_row(c, sd_uuid)

    def domains(self) -> list[Domain]:
        with self._tx(write=False) as c:
            return [pooldomains.domain(r)
                    for r in c.execute("SELECT * FROM domains ORDER BY uuid")]

    def add_host(self, name: str, url: str, token: str,
                 domains: Sequence[str] | None = None) -> Host:
        """Add a host, or change an existing one's URL, token and domains
        (None: keep those it serves)."""
        with self._tx() as c:
            return pooldomains.add_host(c, name, url, token, domains)

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
        """What the store of ``sd_uuid`` must hold now, for a push (see stores)."""
        with self._tx() as c:
            return stores.content(c, sd_uuid)

    def read_blobs(self, digests: Sequence[str]) -> dict[str, bytes]:
        with self._tx(write=False) as c:
            return stores.read_blobs(c, digests)

    def store_pushed(self, content: StoreContent, generation: int, digest: str,
                     tar_length: int, host: str, when: float, started: float) -> bool:
        """Record a verified push that started at ``started``; True if the
        store is now up to date (see stores)."""
        with self._tx() as c:
            return stores.pushed(c, content, generation, digest, tar_length, host, when,
                                 started)

    def store_imported(self, sd_uuid: str, generation: int, digest: str, tar_length: int,
                       host: str, entities: Iterable[str]) -> None:
        """Record a store ``domain import`` read (see stores.imported)."""
        with self._tx() as c:
            stores.imported(c, sd_uuid, generation, digest, tar_length, host, entities)

    def claim_store(self, sd_uuid: str) -> None:
        """This engine may replace the store of ``sd_uuid`` (see Store.claimed)."""
        with self._tx() as c:
            stores.claim(c, sd_uuid)

    def hold_ovfs(self, sd_uuid: str, held: Sequence[tuple[str, bytes, str]]) -> None:
        """Keep (entity UUID, OVF, why) in the store of ``sd_uuid`` though the
        cache could not take them (see schema._V2)."""
        with self._tx() as c:
            stores.hold(c, sd_uuid, [(uuid, entities.put_blob(c, data), why)
                                     for uuid, data, why in held])

    def store_failed(self, content: StoreContent, error: str, retry_at: float) -> None:
        """Record a failed push: the store stays outdated (see stores)."""
        with self._tx() as c:
            stores.failed(c, content, error, retry_at)

    # -- the pool sync's records

    def host_sync(self, host: str) -> HostSync:
        with self._tx(write=False) as c:
            return pooldomains.host_sync(c, host)

    def record_sync(self, host: str, **fields: Any) -> None:
        """Update some of ``HostSync``'s fields of ``host`` (stats as a dict)."""
        with self._tx() as c:
            pooldomains.record_sync(c, host, fields)

    def host_reports(self) -> dict[str, dict[str, Any]]:
        """Each host's last ``GET /stats`` answer, for choosing where to push."""
        with self._tx(write=False) as c:
            rows = c.execute("SELECT host, stats FROM host_sync WHERE stats IS NOT NULL")
            return {r["host"]: json.loads(r["stats"]) for r in rows}

    # -- VMs and templates

    def import_entities(self, items: Iterable[ImportItem], default_domain: str | None = None,
                        disk_domains: Mapping[str, str] | None = None) -> list[Imported]:
        """Add or update entities from parsed OVFs: all of them, or none on error.
        ``items`` is read inside the transaction, one by one (see importer)."""
        with self._tx() as c:
            return entities.import_items(c, items, default_domain, disk_domains or {})

    def entities(self) -> list[Entity]:
        with self._tx(write=False) as c:
            return entities.entity_rows(c)

    def resolve(self, ref: str) -> str:
        """The UUID of the VM or template named by UUID or name (see entities)."""
        with self._tx(write=False) as c:
            return entities.resolve(c, ref)

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
