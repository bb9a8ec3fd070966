"""Run the daemon: one application, a data listener and a control listener."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import ipaddress
import logging
import os
import resource
import signal
import socket
import ssl
import stat

import uvloop
from aiohttp import web

from volume.durable import makedirs_durable

from .app import INFLIGHT, RUNNER_KWARGS, make_app
from .config import Config, InvalidConfig
from .connections import Guard, connection_cap, raise_nofile_limit

log = logging.getLogger(__name__)

#: imageio's listen backlog: "10 transfers x 4 connections".
BACKLOG = 40
#: aiohttp's shutdown timeout, once the drain (daemon.drain_timeout) is
#: over: it waits this long for handlers, cancels them, and waits as long
#: again for their cleanup.  Its default, 60 s, came on top of the drain:
#: a slow OVF GET made a SIGTERM take 181 s, past systemd's 90 s.
SHUTDOWN_GRACE = 5.0


def tls_context(cert: str, key: str, engine_ca: str = "") -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except OSError as e:  # ssl.SSLError included
        raise InvalidConfig(f"cannot load TLS certificate {cert} and key {key}: "
                            f"{e.strerror or e}") from None
    if engine_ca:
        # Image clients have no certificate; the engine presents one.
        ctx.verify_mode = ssl.CERT_OPTIONAL
        try:
            ctx.load_verify_locations(engine_ca)
        except OSError as e:
            raise InvalidConfig(f"cannot load engine CA {engine_ca}: {e.strerror or e}") from None
    return ctx


def claim_socket(path: str) -> None:
    """Remove a stale control socket, left by a daemon that crashed.

    Anything else at ``path`` stays: a socket a running daemon listens on,
    or a file that is not a socket at all (a mistyped option).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
    with socket.socket(socket.AF_UNIX) as probe:
        probe.settimeout(5)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # nobody listens on it
            return
        except FileNotFoundError:
            return
        except OSError:
            pass  # a full backlog, say: someone listens
    raise OSError(errno.EADDRINUSE, "another daemon listens on this control socket", path)


def bind_control(path: str) -> socket.socket:
    """The control socket, bound and given mode 0660 before it listens: a
    client connected in between would keep what the umask let it have."""
    sock = socket.socket(socket.AF_UNIX)
    try:
        try:
            sock.bind(path)
        except OSError as e:  # bind() names no file in its error
            raise OSError(e.errno, e.strerror, path) from None
        os.chmod(path, 0o660)
    except BaseException:
        sock.close()
        raise
    return sock


def check_bindable(host: str, port: int) -> None:
    """Raise OSError now if the data address cannot be bound (in use, not
    this host's): a daemon that cannot listen must fail before its startup
    makes the embedded default's domain, OVF stores and token."""
    for family, kind, proto, _, addr in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the site will
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind(addr)
            except OSError as e:
                raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror}") \
                    from None


async def serve(cfg: Config, ctx: ssl.SSLContext | None,
                ready: asyncio.Event | None = None) -> None:
    host, _, port = cfg.daemon.listen.rpartition(":")
    host = host.strip("[]")
    sock_path = str(cfg.control_socket_path)
    # Both listeners first: the app's startup writes to the data directory.
    check_bindable(host, int(port))
    control = bind_control(sock_path)
    app = make_app(cfg)
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=SHUTDOWN_GRACE, **RUNNER_KWARGS)
    try:
        await runner.setup()
    except BaseException:
        control.close()
        raise
    assert runner.server is not None
    head_timeout = cfg.daemon.request_head_timeout
    cap = connection_cap(cfg.daemon.max_connections)
    guard = Guard(runner.server, head_timeout, cap, ctx)
    loop = asyncio.get_running_loop()
    data: asyncio.AbstractServer | None = None
    try:
        # Not a web.TCPSite: its protocol factory is aiohttp's own, unguarded.
        # Plain even with TLS: the guard does each handshake, to count it.
        data = await loop.create_server(
            guard, host or None, int(port), backlog=BACKLOG, reuse_address=True)
        await web.SockSite(runner, control).start()
        log.info("serving data on %s://%s, control on %s",
                 "https" if ctx else "http", cfg.daemon.listen, sock_path)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        log.info("open files limit: %d (hard limit %d); at most %d connections, "
                 "%d s for a first request", soft, hard, cap, head_timeout)
        warning = exposure_warning(host, ctx is not None)
        if warning:
            log.warning("%s", warning)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready.set()
        await stop.wait()
        stop.clear()
        inflight = app[INFLIGHT]
        log.info("shutting down: %d requests to finish", inflight.count)
        data.close()  # new connections are refused from here on
        guard.close()
        for site in list(runner.sites):
            await site.stop()
        # Until they are done, the drain times out, or a second signal comes.
        drained = asyncio.ensure_future(inflight.idle())
        interrupt = asyncio.ensure_future(stop.wait())
        await asyncio.wait([drained, interrupt], timeout=cfg.daemon.drain_timeout,
                           return_when=asyncio.FIRST_COMPLETED)
        drained.cancel()
        interrupt.cancel()
    finally:
        if data is not None:
            data.close()
        await runner.cleanup()


def exposure_warning(host: str, tls: bool) -> str | None:
    """What to warn about when the data API listens beyond loopback without
    TLS (the shipped container config does, and maps the port): tickets and
    the engine's token would cross the network in clear text."""
    if tls or _is_loopback(host):
        return None
    return (f"the data API listens on {host or 'all interfaces'} without TLS: ticket ids "
            "and the engine credential travel in clear text; set daemon.cert and "
            "daemon.key, or listen on loopback only")


def _is_loopback(host: str) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def _remove_socket(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def lock_data_dir(data_dir: str) -> int:
    """Hold ``<data_dir>/daemon.lock`` for the daemon's life (the returned fd).

    Two daemons on one data directory would write the same domain and
    OVF stores with no order between them; the second one is refused,
    whatever control socket it was given.  The kernel drops the lock
    when the process dies, so a crash leaves nothing to clean up.
    """
    path = os.path.join(data_dir, "daemon.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise OSError(errno.EBUSY, f"another sluice serve (pid {holder}) uses this data "
                      "directory", data_dir) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def run(cfg: Config) -> None:
    d = cfg.daemon
    raise_nofile_limit()  # logged once listening
    ctx = tls_context(d.cert, d.key, cfg.engine.ca) if d.cert else None
    makedirs_durable(str(cfg.data_path))
    lock = lock_data_dir(str(cfg.data_path))
    try:
        sock_path = str(cfg.control_socket_path)
        claim_socket(sock_path)
        try:
            uvloop.run(serve(cfg, ctx))
        finally:
            _remove_socket(sock_path)
    finally:
        os.close(lock)
