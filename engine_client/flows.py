"""Storage domain flows in oVirt's order: maintenance, activation, detach.

oVirt refreshes a leaving domain's OVF stores before it lets it go
(``DeactivateStorageDomainWithOvfUpdateCommand``; ovirt-storage.md §1.1,
§2.4), so that the domain alone carries its VMs' configurations:

- **maintenance**: Active → ``PreparingForMaintenance`` (the map pushed:
  hosts still take the domain's OVF writes) → its store refreshed →
  ``Maintenance`` (map pushed).  A failed refresh puts the domain back
  where it was and stops the flow, unless forced (oVirt's
  ``forceMaintenance``, BZ 1321585).
- **detach**: Maintenance → ``Detaching`` (map pushed) → refresh → out of
  the pool with its VMs (``pooldomains.detach``; map pushed).  A failed
  refresh puts it back in Maintenance, unless forced.
- **activation**: Maintenance → ``Activating`` (map pushed) → ``Active``
  (map pushed) → refresh, since the domain missed every change while it
  was away.  A failed refresh leaves it Active with its store outdated,
  for the updater to retry like any other.

A refresh counts once every store of the domain holds it: a host answers
the push once one store is committed and copies it into the others after,
and the map that moves the domain on stops those copies.

A master domain going to maintenance hands the role to an Active domain
once its refresh is done (a detached one, as it leaves the pool).  A
flow cut short (the engine stopped) is resumed by running it again: each
accepts the transitional status it leaves behind, and the cache keeps
the status the first run found, to put the domain back there.  One flow
at a time per domain, across processes: a second one is refused while
the first holds the domain's flow lock (an ``flock`` in the state
directory, released when its process dies); the move into the
transitional status is one compare-and-set in the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from . import decide, passlock
from .cache import Cache
from .config import Config
from .errors import EngineError, InvalidInput
from .hostapi import Clients
from .model import DomainStatus
from .passreport import DomainReport
from .poolsync import HostReport, PoolSync
from .report import count
from .updater import Updater

log = logging.getLogger(__name__)

S = DomainStatus
#: The transitional status each flow moves the domain to first.
STEPS = {
    "maintenance": S.PREPARING_FOR_MAINTENANCE,
    "detach": S.DETACHING,
    "activate": S.ACTIVATING,
}
#: Where each flow may start (the last of each: a cut-short run, resumed).
STARTS = {
    "maintenance": (S.ACTIVE, S.INACTIVE, S.UNKNOWN, S.PREPARING_FOR_MAINTENANCE),
    "detach": (S.MAINTENANCE, S.DETACHING),
    "activate": (S.MAINTENANCE, S.INACTIVE, S.UNKNOWN, S.ACTIVATING),
}
#: A refresh that lost to a change made meanwhile ("superseded") runs again
#: this many times in all.
REFRESH_TRIES = 3
#: How long a flow waits for a host still copying the refreshed archive into
#: the domain's other stores (its ``info`` answers "updating" after 10 s of
#: waiting itself): a copy of a 128 MiB store is seconds on working storage;
#: ten minutes is 15 of them at 3 MB/s, slower than any domain should be.
COPY_WAIT = 600.0
#: Seconds between two ``info`` calls while the host says it is updating.
COPY_POLL = 1.0


class FlowFailed(EngineError):
    """The flow stopped; ``report`` says where the domain was left."""

    def __init__(self, detail: str, report: FlowReport) -> None:
        super().__init__(detail)
        self.report = report


@dataclass
class FlowReport:
    flow: str
    sd_uuid: str
    #: The domain's status at the end; None once detached.
    status: str | None = None
    ok: bool = False
    forced: bool = False
    steps: list[str] = field(default_factory=list)
    refresh: DomainReport | None = None
    #: VMs and templates that left the pool with a detached domain.
    dropped: list[str] = field(default_factory=list)
    #: Hosts that answered nothing to one of the flow's map pushes: its
    #: next pushes skip them rather than wait out their timeouts again
    #: (the pool sync gives them the map later).
    silent_hosts: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Flows:
    def __init__(self, cache: Cache, cfg: Config,
                 session: aiohttp.ClientSession | None = None) -> None:
        self.cache = cache
        self._sync = PoolSync(cache, cfg, session)
        self._updater = Updater(cache, cfg, session)
        self._clients = Clients(cfg.http, session)

    async def close(self) -> None:
        await self._sync.close()
        await self._updater.close()
        await self._clients.close()

    async def maintenance(self, sd_uuid: str, force: bool = False) -> FlowReport:
        async with self._flow("maintenance", sd_uuid) as (report, origin):
            # Back where the first run found it (resumed from an older
            # cache, that is not known: Active, where maintenance starts).
            await self._refreshed_or_back(report, origin or S.ACTIVE, force)
            await self._hand_over_master(report)  # as oVirt: once it is really leaving
            await self._set(report, S.MAINTENANCE)
            return self._done(report)

    async def detach(self, sd_uuid: str, force: bool = False) -> FlowReport:
        async with self._flow("detach", sd_uuid) as (report, _):
            await self._refreshed_or_back(report, S.MAINTENANCE, force)
            try:  # the master role, if it had it, goes with the detach itself
                report.dropped = await asyncio.to_thread(self.cache.detach_domain,
                                                         report.sd_uuid)
            except InvalidInput as e:  # a VM got a disk elsewhere meanwhile
                await self._set(report, S.MAINTENANCE)
                raise FlowFailed(f"{e}; it stays Maintenance", report) from None
            report.status = None
            report.steps.append(f"left the pool with {len(report.dropped)} VMs and "
                                f"templates; {await self._push(report)}")
            return self._done(report)

    async def activate(self, sd_uuid: str) -> FlowReport:
        async with self._flow("activate", sd_uuid) as (report, _):
            await self._set(report, S.ACTIVE)
            if not await self._refresh(report):
                report.steps.append("its OVF store stays outdated; the updater retries it")
            return self._done(report)

    # -- steps

    @contextlib.asynccontextmanager
    async def _flow(self, flow: str, sd_uuid: str
                    ) -> AsyncIterator[tuple[FlowReport, DomainStatus | None]]:
        """The domain's flow lock held, the domain moved into the flow's
        transitional status (map pushed; a detach only if the domain can
        leave with its VMs): the report and the status the flow found the
        domain in (None: not known)."""
        domain = await asyncio.to_thread(self.cache.domain, sd_uuid)
        sd = domain.uuid
        held = passlock.hold_flow(self.cache.state_dir, sd)
        try:
            entered = asyncio.ensure_future(asyncio.to_thread(
                self.cache.enter_flow, sd, STEPS[flow], STARTS[flow], flow, flow == "detach"))
            try:
                origin = await asyncio.shield(entered)
            except asyncio.CancelledError:
                await asyncio.wait([entered])  # its transaction ends under the lock
                raise
            resumed = domain.status == STEPS[flow]
            log.info("domain %s: %s flow from %s%s", sd, flow, domain.status,
                     f" (first run from {origin or 'unknown'})" if resumed else "")
            report = FlowReport(flow, sd, str(STEPS[flow]))
            report.steps.append(f"{STEPS[flow]}; {await self._push(report)}")
            yield report, origin
        finally:
            passlock.release(held)

    async def _hand_over_master(self, report: FlowReport) -> None:
        master = await asyncio.to_thread(self.cache.hand_over_master, report.sd_uuid)
        if master is not None:
            report.steps.append(f"master role handed over to domain {master}")

    async def _set(self, report: FlowReport, status: DomainStatus) -> None:
        await asyncio.to_thread(self.cache.set_domain_status, report.sd_uuid, status)
        report.status = str(status)
        report.steps.append(f"{status}; {await self._push(report)}")

    async def _push(self, report: FlowReport) -> str:
        """Push the map to every host the flow has not found silent; what
        happened, in words (a host that missed it gets it from the pool
        sync later)."""
        hosts = await self._sync.sync_once(force=True, skip=report.silent_hosts)
        report.silent_hosts += [h.host for h in hosts
                                if h.silent and h.host not in report.silent_hosts]
        return _pushes(hosts)

    async def _refresh(self, report: FlowReport) -> bool:
        sd = report.sd_uuid
        for _ in range(REFRESH_TRIES):
            await asyncio.to_thread(self.cache.mark_outdated, sd)
            result = await self._updater.run_once(retry_now=True, only=sd)
            found = [d for d in result.domains if d.sd_uuid == sd]
            report.refresh = found[0] if found else await self._pushed_meanwhile(sd)
            if report.refresh.outcome != "superseded":
                break
        refresh = report.refresh
        assert refresh is not None
        if refresh.outcome == "updated":
            missing = await self._copies_missing(refresh)
            if missing is not None:
                refresh.outcome = "failed"
                refresh.detail = (f"generation {refresh.generation} went to host "
                                  f"{refresh.host}, but not into every store: {missing}")
        if refresh.outcome == "updated":
            report.steps.append(f"OVF store refreshed on host {refresh.host}: generation "
                                f"{refresh.generation}, {count(refresh.entities or 0, 'OVF')}")
            return True
        report.steps.append(f"OVF store refresh {refresh.outcome}: {refresh.detail}")
        return False

    async def _copies_missing(self, refresh: DomainReport) -> str | None:
        """Why not every OVF store of the domain holds the refreshed archive,
        or None.  A host answers a push once one store is committed and
        copies it into the others after; the next map (Maintenance, out of
        the pool) stops those copies, which would leave the domain with one
        good store where oVirt has them all rewritten before it lets the
        domain go.  ``GET .../ovf-store/info`` waits for the copies, up to
        10 s, then says "updating"; it is asked again up to COPY_WAIT."""
        sd = refresh.sd_uuid
        if refresh.host is None or refresh.generation is None:
            return "the host that took it is not known"
        deadline = time.monotonic() + COPY_WAIT
        try:
            host = await asyncio.to_thread(self.cache.host, refresh.host)
            while (info := await self._clients(host).ovf_store_info(sd)).get("updating") is True:
                if time.monotonic() >= deadline:
                    return (f"the host was still copying it into the other stores after "
                            f"{COPY_WAIT:.0f} s")
                log.info("domain %s: host %s is still copying its OVF store; waiting", sd,
                         host.name)
                await asyncio.sleep(COPY_POLL)
        except EngineError as e:  # the host gone, or removed meanwhile
            return f"its stores could not be checked: {e}"
        return decide.copies_missing(sd, refresh.generation, info)

    async def _pushed_meanwhile(self, sd: str) -> DomainReport:
        """No report of the domain in the flow's pass: another updater (the
        engine's running loop) pushed the store in between.  Only a push of
        content read after the flow's mark clears ``outdated`` (see
        ``stores.pushed``), so a store no longer outdated is refreshed."""
        store = await asyncio.to_thread(self.cache.store, sd)
        if store.outdated:
            return DomainReport(sd, "failed", "the updater did not push it")
        return DomainReport(sd, "updated", "by another pass", store.host, store.generation,
                            store.tar_length, store.digest, len(store.stored))

    async def _refreshed_or_back(self, report: FlowReport, back: DomainStatus,
                                 force: bool) -> None:
        if await self._refresh(report):
            return
        refresh = report.refresh
        assert refresh is not None
        if force:
            report.forced = True
            log.warning("domain %s: OVF store refresh failed (%s); going on, as forced",
                        report.sd_uuid, refresh.detail)
            return
        await self._set(report, back)
        raise FlowFailed(
            f"storage domain {report.sd_uuid} stays {back}: refreshing its OVF store "
            f"failed ({refresh.detail}); fix that, or use --force to go on without it",
            report)

    @staticmethod
    def _done(report: FlowReport) -> FlowReport:
        report.ok = True
        log.info("domain %s: %s done (%s)", report.sd_uuid, report.flow,
                 report.status or "detached")
        return report


def _pushes(hosts: Sequence[HostReport]) -> str:
    if not hosts:
        return "no host to push the map to"
    done = [h.host for h in hosts if h.state == "pushed"]
    missed = [f"{h.host} ({h.state}: {h.detail})" for h in hosts if h.state != "pushed"]
    words = f"map pushed to {', '.join(done)}" if done else "map pushed to no host"
    return words + (f"; not to {', '.join(missed)}" if missed else "")
