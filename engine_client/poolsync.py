"""Keep every host's pool map equal to the engine's.

The engine holds the authoritative map (``Cache.host_map``: the pool and
the domains each host serves) and pushes it with ``PUT /pool``; its
``map_version`` grows with every change.  A sync reads each host's
``GET /stats`` and sends the map again when the host reports

- another pool or map version (it restarted, or missed a push), or
- a storage error on a domain that the engine has Active.  Re-sending the
  same version would change nothing on the host, so the version grows,
  which makes the host re-check its storage (vdsm gets connectStoragePool
  again in that case, ovirt-storage.md §2.4).  At most once per
  ``error_resend_interval`` per host, so a dead NFS server does not make
  the version race.

A host answering 409 ``stale-map`` holds a newer version than ours (say an
engine database restored from a backup): the version jumps past it and the
map goes again, since the engine's map is the one that counts.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from stream.wire.poolmap import MAX_MAP_VERSION

from .cache import Cache
from .config import Config
from .errors import HostError
from .hostapi import Clients, HostClient
from .model import DomainStatus, Host

log = logging.getLogger(__name__)


def _unread(e: HostError) -> str:
    """The state of a host whose stats could not be read: it answered, but
    refused the credential; or it could not be reached or understood."""
    return "refused" if e.status in (401, 403) else "unreachable"


@dataclass
class HostReport:
    host: str
    url: str
    expected_version: int
    reported_version: int | None = None
    #: "in-sync", "pushed", "failed", "unreachable", "refused" (the host
    #: refused the engine's credential), "waiting" or "out-of-sync"
    #: (``pool status`` only looks).
    state: str = "in-sync"
    detail: str | None = None
    domains: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The host took a connection and answered nothing in time (frozen, or
    #: swamped): a flow skips it for its next steps.
    silent: bool = False


def check_stats(host: str, stats: dict[str, Any]) -> dict[str, Any]:
    """``stats`` if it has the shape of a ``GET /stats`` answer; HostError if not
    (not a Sluice host, or a broken one: one such host must not stop the sync)."""
    domains = stats.get("domains")
    if (not isinstance(stats.get("pool_id"), str)
            or type(stats.get("map_version")) is not int
            or not isinstance(domains, dict)
            or not all(isinstance(d, dict) for d in domains.values())):
        raise HostError(host, f"GET /stats answered a malformed report: {str(stats)[:200]}",
                        code="bad-answer")
    return stats


def storage_errors(expected: Mapping[str, Any], stats: Mapping[str, Any]) -> dict[str, str]:
    """The domains Active in ``expected`` that the host reports failing."""
    found = {}
    for sd, d in expected.get("domains", {}).items():
        seen = stats.get("domains", {}).get(sd)
        if d.get("status") != DomainStatus.ACTIVE or not isinstance(seen, dict):
            continue
        if seen.get("reachable") is False or seen.get("error"):
            found[sd] = str(seen.get("error") or "unreachable")
    return found


def resend_reason(expected: Mapping[str, Any], stats: Mapping[str, Any]) -> str | None:
    """Why the host needs the map again (not counting storage errors), or None."""
    if stats.get("pool_id") != expected["pool_id"]:
        return f"the host is in pool {stats.get('pool_id')!r}, not {expected['pool_id']}"
    if stats.get("map_version") != expected["map_version"]:
        return (f"the host has map version {stats.get('map_version')}, the engine "
                f"{expected['map_version']}")
    seen = {sd: d.get("status") for sd, d in stats.get("domains", {}).items()}
    want = {sd: d["status"] for sd, d in expected["domains"].items()}
    if seen != want:
        return "the host's domains differ from the engine's map"
    return None


class PoolSync:
    def __init__(self, cache: Cache, cfg: Config, session: aiohttp.ClientSession | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cache = cache
        self.cfg = cfg
        self._client = Clients(cfg.http, session)
        self._clock = clock

    async def close(self) -> None:
        await self._client.close()

    async def _hosts(self, only: str | None) -> list[Host]:
        if only is not None:
            return [await asyncio.to_thread(self.cache.host, only)]
        return await asyncio.to_thread(self.cache.hosts)

    async def status(self, only: str | None = None) -> list[HostReport]:
        """Each host's view against the engine's map; pushes nothing."""
        hosts = await self._hosts(only)
        return list(await asyncio.gather(*(self._look(h) for h in hosts)))

    async def _look(self, host: Host) -> HostReport:
        expected = await asyncio.to_thread(self.cache.host_map, host.name)
        report = HostReport(host.name, host.url, expected["map_version"])
        try:
            stats = check_stats(host.name, await self._client(host).stats())
        except HostError as e:
            report.state, report.detail = _unread(e), e.detail
            return report
        report.reported_version = stats.get("map_version")
        report.domains = stats.get("domains", {})
        reason = resend_reason(expected, stats)
        errors = storage_errors(expected, stats)
        if reason or errors:
            report.state = "out-of-sync"
            report.detail = reason or "; ".join(f"domain {sd}: {e}" for sd, e in errors.items())
        return report

    async def sync_once(self, force: bool = False, only: str | None = None,
                        skip: Collection[str] = ()) -> list[HostReport]:
        """Read every host's stats and push the map where needed (all with
        ``force``); hosts named in ``skip`` are reported unreachable, untried."""
        hosts = await self._hosts(only)
        return list(await asyncio.gather(*(self._sync(h, force) if h.name not in skip
                                           else self._skipped(h) for h in hosts)))

    async def _skipped(self, host: Host) -> HostReport:
        expected = await asyncio.to_thread(self.cache.host_map, host.name)
        return HostReport(host.name, host.url, expected["map_version"], state="unreachable",
                          detail="skipped: it answered nothing earlier in this flow",
                          silent=True)

    async def _sync(self, host: Host, force: bool) -> HostReport:
        client = self._client(host)
        now = self._clock()
        expected = await asyncio.to_thread(self.cache.host_map, host.name)
        report = HostReport(host.name, host.url, expected["map_version"])
        state = await asyncio.to_thread(self.cache.host_sync, host.name)
        try:
            stats = check_stats(host.name, await client.stats())
        except HostError as e:
            # Not recorded as last_error, which is about pushes: a host back
            # from a restart must get its map at once.  Forced, the map goes
            # to a host that could not be read, unless it answered nothing
            # at all: the PUT would wait out its timeout too.
            if not force or e.code == "timeout":
                report.state, report.detail = _unread(e), e.detail
                report.silent = e.code == "timeout"
                return report
            stats = {}
        else:
            await asyncio.to_thread(self.cache.record_sync, host.name, stats=stats,
                                    stats_time=now)
            report.reported_version = stats.get("map_version")
            report.domains = stats.get("domains", {})
        reason = "forced" if force else resend_reason(expected, stats)
        errors = storage_errors(expected, stats)
        interval = self.cfg.pool.error_resend_interval
        if reason is None and errors:
            if state.last_resend is not None and now - state.last_resend < interval:
                report.state = "out-of-sync"  # as status() says; resent after the interval
                report.detail = ("storage errors: " + "; ".join(errors.values())
                                 + f"; the map is sent again at most every {interval:g} s")
                return report
            reason = "storage error on " + "; ".join(f"domain {sd}: {e}"
                                                     for sd, e in errors.items())
            await asyncio.to_thread(self.cache.bump_map_version)
            await asyncio.to_thread(self.cache.record_sync, host.name, last_resend=now)
        if reason is None:
            return report
        failed_lately = (state.last_error is not None and state.last_push is not None
                         and now - state.last_push < interval)
        if failed_lately and not force:
            report.state = "waiting"
            report.detail = f"{reason}; the last push failed: {state.last_error}"
            return report
        return await self._push(client, report, reason, now)

    async def _put(self, client: HostClient) -> tuple[dict[str, Any], dict[str, Any]]:
        """PUT the map; past a newer version the host holds if it says stale-map."""
        name = client.host.name
        expected = await asyncio.to_thread(self.cache.host_map, name)
        try:
            return await client.put_pool(expected), expected
        except HostError as e:
            newer = e.body.get("map_version")
            if (e.code != "stale-map" or type(newer) is not int
                    or not 0 <= newer < MAX_MAP_VERSION):
                raise
        log.warning("host %s holds map version %d, newer than the engine's; moving past it",
                    name, newer)
        await asyncio.to_thread(self.cache.bump_map_version, newer)
        expected = await asyncio.to_thread(self.cache.host_map, name)
        return await client.put_pool(expected), expected

    async def _push(self, client: HostClient, report: HostReport, reason: str,
                    now: float) -> HostReport:
        name = client.host.name
        try:
            answer, expected = await self._put(client)
        except HostError as e:
            await asyncio.to_thread(self.cache.record_sync, name, last_push=now,
                                    last_error=str(e))
            report.state, report.detail = "failed", f"{reason}; {e.detail}"
            report.silent = e.code == "timeout"
            log.warning("pool map not pushed to host %s: %s", name, e)
            return report
        await asyncio.to_thread(self.cache.record_sync, name, last_push=now, last_error=None,
                                pushed_version=expected["map_version"])
        report.expected_version = expected["map_version"]
        report.reported_version = answer.get("map_version")
        report.state, report.detail = "pushed", reason
        log.info("pool map version %d pushed to host %s (%s): changed=%s",
                 expected["map_version"], name, reason, answer.get("changed"))
        return report

    async def run_forever(self) -> None:
        while True:
            try:
                await self.sync_once()
            except sqlite3.Error:  # the next round may do; the loop must not die
                log.exception("pool sync failed in the engine cache")
            await asyncio.sleep(self.cfg.pool.sync_interval)
