"""The commands that run the engine's loops against the hosts: ``ovf``
(a pass of the OVF updater, or the updater until stopped), ``pool``
(push, status, or the sync until stopped) and ``run`` (both loops).

aiohttp is imported only here, when one of them runs: the other commands
work on the cache alone and start faster without it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from dataclasses import asdict

from . import config, report
from .cache import Cache


async def ovf(cache: Cache, cfg: config.Config, args: argparse.Namespace) -> int:
    if args.action == "status":
        stores = cache.stores()
        report.out(args, [{**asdict(s), "stored": sorted(s.stored)} for s in stores],
                   lambda: report.stores(stores))
        return 0
    from .updater import Updater  # aiohttp: only for commands that talk to hosts

    updater = Updater(cache, cfg)
    try:
        if not args.once:
            return await _until_stopped(updater.run_forever(), updater.trigger)
        result = await updater.run_once(retry_now=args.retry_now)
    finally:
        await updater.close()
    report.out(args, result.to_json(), lambda: report.update_pass(result))
    return 0 if result.ok else 1


async def pool(cache: Cache, cfg: config.Config, args: argparse.Namespace) -> int:
    from .poolsync import PoolSync

    sync = PoolSync(cache, cfg)
    try:
        if args.action == "sync":
            return await _until_stopped(sync.run_forever())
        if args.action == "push":
            hosts = await sync.sync_once(force=True, only=args.host)
        else:
            hosts = await sync.status(only=args.host)
    finally:
        await sync.close()
    report.out(args, [asdict(h) for h in hosts], lambda: report.pool(hosts))
    bad = ("failed", "unreachable", "refused", "out-of-sync", "waiting")
    return 1 if any(h.state in bad for h in hosts) else 0


async def run(cache: Cache, cfg: config.Config) -> int:
    from .poolsync import PoolSync
    from .updater import Updater

    updater, sync = Updater(cache, cfg), PoolSync(cache, cfg)

    async def both() -> None:
        await asyncio.gather(updater.run_forever(), sync.run_forever())

    try:
        return await _until_stopped(both(), updater.trigger)
    finally:
        await updater.close()
        await sync.close()


async def _until_stopped(work: Awaitable[None], on_usr1: Callable[[], None] | None = None
                         ) -> int:
    """Run ``work`` until SIGTERM (exit status 0) or SIGINT (Ctrl-C: 130);
    SIGUSR1 calls ``on_usr1``."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    stopped_by: list[signal.Signals] = []

    def stop(sig: signal.Signals) -> None:
        stopped_by.append(sig)
        task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig)
    if on_usr1 is not None:
        loop.add_signal_handler(signal.SIGUSR1, on_usr1)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return 130 if signal.SIGINT in stopped_by else 0
