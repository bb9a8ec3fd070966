"""The OVF updater: oVirt's OvfDataUpdater, made better.

One pass (``run_once``):

1. Entity phase: the entities whose ``db_generation`` is ahead of their
   ``ovf_generation``, a chunk at a time (one transaction each): a locked
   one is skipped and keeps its old cached OVF; the others get their OVF
   cached and their domains marked outdated.  Deletions mark the domains
   that held the deleted entities.
2. Domain phase: every outdated store whose domain takes OVF writes and
   whose retry time has come is built from the cache and streamed to a
   host serving the domain, several domains at once (``concurrency``).
   Each push has its own timeouts, so one slow host holds up only its own
   domain; each result is committed as soon as it is known.  A failure
   leaves the store outdated and schedules a retry with exponential backoff
   and jitter; the loop wakes up for it instead of waiting for ``interval``.

``run_forever`` runs a pass every ``interval`` and at once on ``trigger()``.
A pass waits for one another process runs on the same cache (``passlock``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import aiohttp

from . import decide, passlock
from .cache import Cache
from .config import Config
from .errors import EngineError, HostError
from .hostapi import Clients, HostClient
from .model import Domain, Host, Store, StoreContent
from .passreport import DomainReport, PassReport
from .push import CacheCorrupt, ContentChanged, PushResult, push_store

log = logging.getLogger(__name__)

T = TypeVar("T")


class Updater:
    def __init__(self, cache: Cache, cfg: Config,
                 session: aiohttp.ClientSession | None = None,
                 rand: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.time) -> None:
        self.cache = cache
        self.cfg = cfg
        self._clients = Clients(cfg.http, session)
        self._rand = rand
        self._clock = clock
        self._wake = asyncio.Event()
        self._pass_lock = asyncio.Lock()
        #: The cache's calls and the tars' chunks, one at a time: the cache
        #: has one connection anyway, and memory freed in one thread is
        #: reused by the next chunk.  Spread over the default pool, each
        #: thread kept its own malloc arena and a pass over 10,000 VMs
        #: peaked 15 MiB above one over 1,000, instead of 7 MiB.
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="ovf-updater")

    async def close(self) -> None:
        await self._clients.close()
        self._worker.shutdown(wait=False)

    def _run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """``fn(*args)`` in the updater's worker thread."""
        return asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    def trigger(self) -> None:
        """Run a pass now (or right after the one running), like triggerNow()."""
        self._wake.set()

    # -- one pass

    async def run_once(self, retry_now: bool = False, only: str | None = None) -> PassReport:
        """One pass; ``retry_now`` ignores the backoff of failed domains;
        ``only`` pushes that domain's store alone (a flow refreshing it)."""
        async with self._pass_lock:
            # And one pass of any process on this cache: another one's pass
            # would push the stores this one pushes (see passlock).
            held = await passlock.acquire(self.cache.state_dir)
            try:
                report = PassReport(self._clock())
                start = time.monotonic()
                await self._entity_phase(report)
                await self._domain_phase(report, retry_now, only)
                report.seconds = round(time.monotonic() - start, 3)
                dropped = await self._run(self.cache.gc_blobs)
            finally:
                passlock.release(held)
            log.info("OVF pass: %d entities processed, %d skipped, %d deletions, domains: %s; "
                     "%d unused OVFs dropped; pass took %.3f s", report.processed_count,
                     report.skipped_count, len(report.deleted),
                     ", ".join(f"{d.sd_uuid}={d.outcome}" for d in report.domains) or "none",
                     dropped, report.seconds)
            return report

    async def _entity_phase(self, report: PassReport) -> None:
        after = ""
        skipped: set[str] = set()
        while True:
            selected = await self._run(self.cache.outdated_entities, after,
                                       self.cfg.updater.chunk_size)
            if not selected:
                break
            for o in await self._run(self.cache.process_entities, selected):
                if not o.processed and o.uuid in skipped:
                    continue  # again, after a restart (see Cache.outdated_entities)
                report.add(o)
                if not o.processed:
                    skipped.add(o.uuid)
                    log.info("%s %s (%s) skipped, its cached OVF stays: %s", o.kind, o.name,
                             o.uuid, o.reason)
            after = selected[-1][0]
        report.deleted = await self._run(self.cache.process_deletions)

    async def _domain_phase(self, report: PassReport, retry_now: bool,
                            only: str | None = None) -> None:
        stores = [s for s in await self._run(self.cache.stores)
                  if only is None or s.sd_uuid == only]
        domains = {d.uuid: d for d in await self._run(self.cache.domains)}
        hosts = await self._run(self.cache.hosts)
        reports = await self._run(self.cache.host_reports)
        now = self._clock()
        limit = asyncio.Semaphore(self.cfg.updater.concurrency)
        features: dict[str, asyncio.Task[bool]] = {}
        jobs: list[Awaitable[DomainReport | None]] = []
        for store in stores:
            if not store.outdated:
                if store.generation is not None and decide.pushable(
                        domains.get(store.sd_uuid), store, now, True) is None:
                    order = decide.host_order(store.sd_uuid, hosts, reports)
                    jobs.append(self._repair(store, store.generation, order, limit, features))
                continue
            why = decide.pushable(domains.get(store.sd_uuid), store, now, retry_now)
            if why is not None:
                retry = store.next_attempt if store.next_attempt > now else None
                report.domains.append(DomainReport(store.sd_uuid, "waiting", why,
                                                   retry_at=retry))
                continue
            order = decide.host_order(store.sd_uuid, hosts, reports)
            jobs.append(self._push_domain(store, order, limit, features))
        try:
            report.domains += [d for d in await asyncio.gather(*jobs) if d is not None]
        finally:
            for task in features.values():
                task.cancel()

    async def _repair(self, store: Store, generation: int, order: list[Host],
                      limit: asyncio.Semaphore, features: dict[str, asyncio.Task[bool]]
                      ) -> DomainReport | None:
        """Push an up-to-date store again if a host shows copies of it missing
        (decide.copies_missing); None if none are, or no host can list it
        now (the next pass looks again).  Run beside the pushes: a host slow
        to list holds up only this domain."""
        sd, why = store.sd_uuid, None
        async with limit:
            for host in order:
                try:
                    info = await self._clients(host).ovf_store_info(sd)
                except HostError as e:
                    log.info("OVF stores of domain %s not checked on host %s: %s", sd,
                             host.name, e)
                    continue
                why = decide.copies_missing(sd, generation, info)
                break
        if why is None:
            return None
        log.warning("OVF stores of domain %s: %s; pushing it again", sd, why)
        await self._run(self.cache.mark_outdated, sd)
        done = await self._push_domain(await self._run(self.cache.store, sd), order, limit,
                                       features)
        if done.detail is None:
            done.detail = f"pushed again: {why}"
        return done

    async def _zstd(self, client: HostClient, features: dict[str, asyncio.Task[bool]]) -> bool:
        if not self.cfg.http.zstd:
            return False
        name = client.host.name
        if name not in features:  # one GET /info/ per host and pass
            async def ask() -> bool:
                return "zstd" in await client.features()
            task = features[name] = asyncio.ensure_future(ask())
            # Shared by the host's domains: one of them may be canceled (the
            # pass stopped) before the answer, and no one else may wait for
            # it; its error is theirs, never "Task exception was never
            # retrieved" with a traceback at exit.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(features[name])

    async def _push_domain(self, store: Store, order: list[Host], limit: asyncio.Semaphore,
                           features: dict[str, asyncio.Task[bool]]) -> DomainReport:
        sd = store.sd_uuid
        async with limit:
            start, started = time.monotonic(), self._clock()
            content = await self._run(self.cache.store_content, sd)
            errors: list[str] = []
            if not order:
                errors.append(f"no host serves domain {sd}; add one with "
                              f"'sluice-engine host add ... --domain {sd}'")
            if store.generation is None and not store.claimed and order:
                why_not = await self._foreign_store(sd, order)
                if why_not is not None:
                    return await self._failed(store, content, why_not,
                                              time.monotonic() - start)
                # Holding no OVF: this engine's from now on.
                await self._run(self.cache.claim_store, sd)
            for host in order:
                client = self._clients(host)
                try:
                    result = await push_store(
                        client, content, self.cache.read_blobs, self._clock(),
                        await self._zstd(client, features), self.cfg.updater.fetch_batch,
                        self.cfg.http.chunk_size, self._worker)
                except ContentChanged as e:  # marked meanwhile: the next pass pushes
                    log.info("OVF store of domain %s not pushed: %s", sd, e)
                    retry_at = await self._superseded(store, content, str(e))
                    return DomainReport(sd, "superseded", f"{e}; stays outdated",
                                        seconds=round(time.monotonic() - start, 3),
                                        retry_at=retry_at)
                except (HostError, CacheCorrupt) as e:
                    log.warning("OVF store of domain %s not pushed: %s", sd, e)
                    errors.append(str(e))
                    if isinstance(e, CacheCorrupt):
                        break
                    continue
                return await self._pushed(store, content, result, started,
                                          time.monotonic() - start)
            return await self._failed(store, content, "; ".join(errors),
                                      time.monotonic() - start)

    async def _foreign_store(self, sd: str, order: list[Host]) -> str | None:
        """Why the store of ``sd`` must not be pushed, or None if a host says
        it holds no OVF.  This engine never pushed it nor imported it: if it
        holds OVFs (another engine's, or this one's before its cache was
        lost), pushing would replace them with only what this cache knows.
        If no host can list it, that is as unknown: the listing and the PUT
        fail apart (a 5xx, a proxy, a listing waiting for slow copies), so a
        push going through would replace what nobody looked at."""
        errors = []
        for host in order:
            try:
                info = await self._clients(host).ovf_store_info(sd)
            except HostError as e:
                errors.append(str(e))
                continue
            return decide.foreign_store(sd, host.name, info)
        return "could not check the domain's existing OVF store: " + "; ".join(errors)

    async def _pushed(self, store: Store, content: StoreContent, r: PushResult,
                      started: float, seconds: float) -> DomainReport:
        updated = await self._run(self.cache.store_pushed, content, r.generation,
                                  r.digest, r.tar_length, r.host, self._clock(), started)
        outcome = "updated" if updated else "superseded"
        log.info("OVF store of domain %s %s on host %s: generation %d, %d OVFs, %d bytes "
                 "(%d sent, zstd=%s) in %.2f s", r.sd_uuid, outcome, r.host, r.generation,
                 r.entities, r.tar_length, r.sent, r.zstd, seconds)
        detail = retry_at = None
        if not updated:
            detail = "changed while it was pushed; stays outdated"
            retry_at = await self._superseded(store, content, "changed while it was pushed")
        return DomainReport(r.sd_uuid, outcome, detail, r.host, r.generation, r.tar_length,
                            r.digest, r.entities, r.sent, r.zstd, round(seconds, 3),
                            retry_at)

    async def _superseded(self, store: Store, content: StoreContent, why: str) -> float | None:
        """Schedule the push of a store marked again while it was pushed; when
        it is retried, or None for the next pass.

        The first time, that is at once: the mark is a change the store still
        lacks.  Marked again during each push after that (another process
        marking it as fast as it is pushed), it waits as a failure does, so
        that the store is not pushed back to back, whole, without end.
        """
        u = self.cfg.updater
        delay = 0.0 if store.failures == 0 else decide.backoff_delay(
            store.failures, u.backoff_base, u.backoff_max, u.jitter, self._rand())
        retry_at = self._clock() + delay
        await self._run(self.cache.store_failed, content, f"superseded: {why}", retry_at)
        return retry_at if delay else None

    async def _failed(self, store: Store, content: StoreContent, error: str,
                      seconds: float) -> DomainReport:
        u = self.cfg.updater
        delay = decide.backoff_delay(store.failures + 1, u.backoff_base, u.backoff_max,
                                     u.jitter, self._rand())
        retry_at = self._clock() + delay
        await self._run(self.cache.store_failed, content, error, retry_at)
        return DomainReport(store.sd_uuid, "failed", error, entities=len(content.members),
                            seconds=round(seconds, 3), retry_at=retry_at)

    # -- the loop

    def _next_wakeup(self, stores: Sequence[Store], domains: dict[str, Domain]) -> float:
        """Seconds to the next pass: the interval, or sooner for an outdated
        store that may be pushed then (a retry that fell due while a long
        pass ran, or a mark made after it, is due now)."""
        now = self._clock()
        due = [max(0.0, s.next_attempt - now) for s in stores
               if s.outdated and decide.pushable(domains.get(s.sd_uuid), s,
                                                 max(now, s.next_attempt), False) is None]
        return max(1.0, min([self.cfg.updater.interval, *due]))

    async def run_forever(self) -> None:
        """A pass every ``interval``, sooner for a due retry or a trigger."""
        while True:
            self._wake.clear()
            try:
                await self.run_once()
            except EngineError as e:
                log.error("OVF update pass failed: %s", e)
            except sqlite3.Error:  # a detach meanwhile, a full disk: the next pass may do
                log.exception("OVF update pass failed in the engine cache")
            stores = await self._run(self.cache.stores)
            domains = {d.uuid: d for d in await self._run(self.cache.domains)}
            delay = self._next_wakeup(stores, domains)
            log.debug("next OVF update pass in %.0f s", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
