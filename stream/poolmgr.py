"""The pool map in force on this host, and what it allows.

Holds the map (in memory only), the domain registry derived from it (where
ticket paths may point), and the monitor's view of each domain.  Applying a
map that makes open tickets illegal cancels them: a write ticket on a domain
that left ``Active``, any ticket on a domain that left the map.  Other users
of domains (copy jobs, OVF store updates through :mod:`stream.mapwatch`)
:meth:`~PoolManager.watch` the map to do the same.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from volume.domains import Domain, DomainRegistry
from volume.errors import Conflict

from .io import IO
from .monitor import Monitor
from .pool import (
    ALLOWED,
    Access,
    DomainEntry,
    DomainNotAvailable,
    PoolMap,
    Status,
    check_locations,
    decide,
)
from .tickets import Authorizer, Ticket

log = logging.getLogger(__name__)


class PoolManager:
    def __init__(
        self, io: IO, auth: Authorizer, monitor: Monitor, remove_timeout: float
    ) -> None:
        self._io = io
        self._auth = auth
        self.monitor = monitor
        self._remove_timeout = remove_timeout
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._watchers: set[Callable[[PoolMap], None]] = set()
        self.current = PoolMap(pool_id="", map_version=0, master_domain=None)
        self.registry = DomainRegistry()

    def start_standalone(self, local: Domain, extra: list[Domain]) -> None:
        """The embedded default: a version-0 pool of the local domains.

        Any map the engine pushes (version >= 1) replaces it.
        """
        domains = {
            d.uuid: DomainEntry(
                d.uuid, d.type, (d.path,) if d.type == "file" else tuple(d.devices),
                Status.ACTIVE,
            )
            for d in [local, *extra]
        }
        self._install(PoolMap(local.uuid, 0, local.uuid, domains))

    async def apply(self, new: PoolMap) -> bool:
        """Put ``new`` in force; False if it was already in force."""
        async with self._lock:
            if not decide(self.current, new):
                return False
            await self.monitor.run_check(check_locations, new)
            old = self.current
            self._install(new)
            log.info("pool %s: map version %d -> %d: %s", new.pool_id, old.map_version,
                     new.map_version,
                     ", ".join(f"{d.uuid}={d.status}" for d in new.domains.values()))
            for ticket in self._auth.all():
                reason = self._illegal(ticket, new)
                if reason:
                    self._cancel(ticket, reason)
            for watcher in list(self._watchers):
                watcher(new)
            return True

    def watch(self, watcher: Callable[[PoolMap], None]) -> Callable[[], None]:
        """Call ``watcher`` with every map put in force from now on, until
        the returned function is called."""
        self._watchers.add(watcher)
        return lambda: self._watchers.discard(watcher)

    def _install(self, pool: PoolMap) -> None:
        registry = DomainRegistry()
        for e in pool.domains.values():
            if e.type == "file":
                registry.add(Domain(e.uuid, "file", e.location[0]))
            else:
                registry.add(Domain(e.uuid, e.type, "", tuple(e.location)))
        self.current = pool
        self.registry = registry
        self.monitor.update(pool)

    def _illegal(self, ticket: Ticket, pool: PoolMap) -> str | None:
        entry = pool.domains.get(ticket.domain or "")
        if entry is None:
            return f"domain {ticket.domain} left the pool map"
        if ticket.may("write") and entry.status not in ALLOWED[Access.WRITE]:
            return f"domain {ticket.domain} is now {entry.status}"
        return None

    def _cancel(self, ticket: Ticket, reason: str) -> None:
        log.warning("canceling transfer %s: %s", ticket.log_id, reason)
        ticket.canceled = True
        task = asyncio.create_task(self._remove(ticket))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _remove(self, ticket: Ticket) -> None:
        try:
            await ticket.cancel(self._remove_timeout)
        except Conflict as e:
            # Kept (canceled: no new request) until they end: a ticket whose
            # write still runs keeps its volume from being deleted.
            log.warning("%s; removing it once they end", e)
            await ticket.idle()
        self._auth.discard(ticket)
        for volume in ticket.take_volumes():
            await self._io.run(volume.close)

    def check(self, sd_uuid: str, access: Access) -> DomainEntry:
        """Raise unless the map in force (and the monitor) allow ``access``."""
        entry = self.current.check(sd_uuid, access)
        health = self.monitor.health.get(sd_uuid)
        if health is not None and not health.reachable:
            raise DomainNotAvailable(
                f"Storage of domain {sd_uuid} is unreachable: {health.error}"
            )
        return entry

    def stats(self) -> dict[str, Any]:
        domains: dict[str, Any] = {}
        for sd, entry in self.current.domains.items():
            h = self.monitor.health.get(sd)
            domains[sd] = {"status": str(entry.status), "checked": h is not None,
                           **(h.to_json() if h else {})}
        return {
            "pool_id": self.current.pool_id,
            "map_version": self.current.map_version,
            "time": time.time(),
            "domains": domains,
        }

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.monitor.close()
