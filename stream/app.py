"""The daemon's one aiohttp application.

It is served on two listeners: the data port (TCP, TLS when configured) and
the control socket (unix, mode 0660).  Control and engine routes answer on
the control socket (its file mode decides who connects) and on the data
port only with the engine's credential (401 otherwise; see auth).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from volume.domains import Domain, load_or_create_default
from volume.ovfstore import ensure_stores

from .auth import access_guard, load_or_create_token
from .config import Config
from .cors import add_cors_headers
from .handlers import control, domains, imagequery, images, jobs, ovf, pool, vdsm
from .io import IO
from .jobs import Jobs
from .middleware import errors
from .monitor import Monitor
from .ovf import Updates
from .poolmgr import PoolManager
from .state import AUTH, CONFIG, IO_KEY, JOBS, OVF_UPDATES, POOL, TOKEN
from .tickets import Authorizer

log = logging.getLogger(__name__)

#: Keyword arguments for the runner serving this app.  aiohttp would decode
#: ``Content-Encoding`` itself, with no bound on the decoded size and no check
#: that a zstd frame is complete; the upload pipeline does both instead.
#: ``read_bufsize``: the body buffer pauses the socket at twice this; the
#: default 64 KiB pauses after every 256 KiB the TLS transport decrypts at
#: once, and 1 MiB measured ~10% faster TLS uploads here (plain: no change).
RUNNER_KWARGS: dict[str, Any] = {"auto_decompress": False, "read_bufsize": 1 << 20}


class Inflight:
    """The requests being handled, so that a shutdown lets them finish.

    aiohttp's own graceful shutdown stops reading every connection at once,
    so an upload in flight waits for the rest of its body until the
    shutdown timeout, and fails; the server waits on :meth:`idle` first.
    """

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.count += 1
        self._idle.clear()
        try:
            return await handler(request)
        finally:
            self.count -= 1
            if not self.count:
                self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()


INFLIGHT = web.AppKey("inflight", Inflight)


def make_app(cfg: Config, *, trust_tcp: bool = False) -> web.Application:
    """Build the application.  Tests pass ``trust_tcp=True`` to reach the
    engine routes through the aiohttp test client's TCP socket without a
    credential; the guard itself has its own tests."""
    tokens: list[str] = []
    guard = access_guard(lambda: tokens[0], bool(cfg.engine.ca), trust_tcp)
    inflight = Inflight()
    app = web.Application(middlewares=[inflight.middleware, errors, guard])
    app[INFLIGHT] = inflight
    app[TOKEN] = tokens
    app[CONFIG] = cfg
    app[AUTH] = Authorizer()
    app[JOBS] = Jobs()
    app[OVF_UPDATES] = Updates(staging=cfg.data_path)
    app.add_routes(images.routes)
    app.add_routes(imagequery.routes)
    app.add_routes(control.routes)
    app.add_routes(pool.routes)
    app.add_routes(domains.routes)
    app.add_routes(jobs.routes)
    app.add_routes(ovf.routes)
    app.add_routes(vdsm.routes)
    app.on_response_prepare.append(add_cors_headers)
    app.cleanup_ctx.append(_resources)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    t = cfg.transfer
    io = IO(t.io_workers, t.buffer_size, t.pool_buffers, t.max_buffer_memory)
    app[IO_KEY] = io
    monitor = Monitor(cfg.monitor.interval, cfg.monitor.timeout)
    mgr = PoolManager(io, app[AUTH], monitor, t.remove_timeout)
    app[POOL] = mgr
    default = await io.run(load_or_create_default, str(cfg.data_path))
    extra = [Domain(d.uuid, d.type, d.path, tuple(d.devices)) for d in cfg.domains]
    mgr.start_standalone(default, extra)
    storage = await io.run(mgr.registry.storage, default.uuid)
    await io.run(ensure_stores, storage, cfg.ovf.stores, cfg.ovf.store_size)
    app[TOKEN].append(
        cfg.engine.token or await io.run(load_or_create_token, str(cfg.data_path))
    )
    log.info("standalone pool: %s", ", ".join(
        f"{d.uuid} ({d.type} {','.join(d.location)})" for d in mgr.current.domains.values()))
    monitor_task = asyncio.create_task(monitor.run(), name="domain-monitor")
    try:
        yield
    finally:
        monitor_task.cancel()
        await app[JOBS].close()
        await app[OVF_UPDATES].close()
        await mgr.close()
        for ticket in app[AUTH].all():
            for volume in ticket.take_volumes():
                await io.run(volume.close)
        io.close()
