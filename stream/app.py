"""The daemon's one aiohttp application.

It is served on two listeners: the data port (TCP, TLS when configured) and
the control socket (unix, mode 0660).  Control routes answer only on the
control socket; on the data port they do not exist (404).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from volume.domains import Domain, load_or_create_default

from .config import Config
from .handlers import control, domains, images, pool
from .io import IO
from .middleware import errors
from .monitor import Monitor
from .poolmgr import PoolManager
from .state import AUTH, CONFIG, IO_KEY, POOL
from .tickets import Authorizer

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _via_unix(request: web.Request) -> bool:
    transport = request.transport
    if transport is None:
        return False
    sock = transport.get_extra_info("socket")
    return sock is not None and sock.family == socket.AF_UNIX


def control_guard(enabled: bool) -> Middleware:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        name = request.match_info.route.name or ""
        if enabled and name.startswith(control.CONTROL) and not _via_unix(request):
            raise web.HTTPNotFound()
        return await handler(request)

    return guard


#: Keyword arguments for the runner serving this app.  aiohttp would decode
#: ``Content-Encoding`` itself, with no bound on the decoded size and no check
#: that a zstd frame is complete; the upload pipeline does both instead.
RUNNER_KWARGS: dict[str, Any] = {"auto_decompress": False}


def make_app(cfg: Config, *, guard_control: bool = True) -> web.Application:
    """Build the application.  Tests pass ``guard_control=False`` to reach
    the control routes through the aiohttp test client's TCP socket."""
    app = web.Application(middlewares=[errors, control_guard(guard_control)])
    app[CONFIG] = cfg
    app[AUTH] = Authorizer()
    app.add_routes(images.routes)
    app.add_routes(control.routes)
    app.add_routes(pool.routes)
    app.add_routes(domains.routes)
    app.cleanup_ctx.append(_resources)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    t = cfg.transfer
    io = IO(t.io_workers, t.buffer_size, t.pool_buffers)
    app[IO_KEY] = io
    monitor = Monitor(cfg.monitor.interval, cfg.monitor.timeout)
    mgr = PoolManager(io, app[AUTH], monitor, t.remove_timeout)
    app[POOL] = mgr
    default = await io.run(load_or_create_default, str(cfg.data_path))
    extra = [Domain(d.uuid, d.type, d.path, tuple(d.devices)) for d in cfg.domains]
    mgr.start_standalone(default, extra)
    log.info("standalone pool: %s", ", ".join(
        f"{d.uuid} ({d.type} {','.join(d.location)})" for d in mgr.current.domains.values()))
    monitor_task = asyncio.create_task(monitor.run(), name="domain-monitor")
    try:
        yield
    finally:
        monitor_task.cancel()
        await mgr.close()
        for ticket in app[AUTH].all():
            if ticket.volume is not None:
                await io.run(ticket.volume.close)
        io.close()
