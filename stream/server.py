"""Run the daemon: one application, a data listener and a control listener."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl

import uvloop
from aiohttp import web

from volume.durable import makedirs_durable

from .app import RUNNER_KWARGS, make_app
from .config import Config

log = logging.getLogger(__name__)

#: imageio's listen backlog: "10 transfers x 4 connections".
BACKLOG = 40


def tls_context(cert: str, key: str, engine_ca: str = "") -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if engine_ca:
        # Image clients have no certificate; the engine presents one.
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(engine_ca)
    return ctx


async def serve(cfg: Config, ready: asyncio.Event | None = None) -> None:
    app = make_app(cfg)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, **RUNNER_KWARGS)
    await runner.setup()
    host, _, port = cfg.daemon.listen.rpartition(":")
    host = host.strip("[]")
    ctx = (
        tls_context(cfg.daemon.cert, cfg.daemon.key, cfg.engine.ca) if cfg.daemon.cert else None
    )
    data = web.TCPSite(runner, host, int(port), ssl_context=ctx, backlog=BACKLOG,
                       reuse_address=True)
    sock_path = str(cfg.control_socket_path)
    control = web.UnixSite(runner, sock_path)
    try:
        await data.start()
        await control.start()
        os.chmod(sock_path, 0o660)
        log.info("serving data on %s://%s, control on %s",
                 "https" if ctx else "http", cfg.daemon.listen, sock_path)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()


def _remove_socket(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def run(cfg: Config) -> None:
    makedirs_durable(str(cfg.data_path))
    sock_path = str(cfg.control_socket_path)
    _remove_socket(sock_path)  # stale, from a previous run
    try:
        uvloop.run(serve(cfg))
    finally:
        _remove_socket(sock_path)
