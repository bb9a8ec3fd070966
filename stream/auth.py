"""Who may call which route.

Three kinds of routes:

- the image API (``/images/...``): authorized by its ticket, from anyone;
- engine routes (tickets, pool map, stats, domains, OVF stores): on the
  control socket, whose file mode decides who connects; on the data port
  only with the engine's credential: ``Authorization: Bearer <token>``, or
  a TLS client certificate signed by the configured engine CA.  Without
  it: 401.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import socket
import stat
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from volume.durable import atomic_write
from volume.errors import Error

log = logging.getLogger(__name__)

#: Route names with this prefix are engine routes.
ENGINE = "engine:"
TOKEN_FILE = "engine.token"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Unauthorized(Error):
    http_status = 401
    code = "unauthorized"


def new_token() -> str:
    """256 random bits in hex: URL-safe, and never starting with '-', which
    ``token_urlsafe`` did once in 64 (``--token <token>`` then looked like
    an option to argparse)."""
    return secrets.token_hex(32)


def load_or_create_token(data_dir: str) -> str:
    """The embedded default's token, generated once (mode 0600).  Blocking."""
    path = os.path.join(data_dir, TOKEN_FILE)
    try:
        with open(path) as f:
            token = f.read().strip()
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            if token and mode & 0o077:
                # Whoever reads it may call every engine route on the data port.
                os.fchmod(f.fileno(), 0o600)
                log.warning("%s was mode %04o, readable by others: made it 0600", path, mode)
        if token:
            return token
    except FileNotFoundError:
        pass
    token = new_token()
    atomic_write(path, token.encode() + b"\n", mode=0o600)
    log.info("generated the engine token in %s", path)
    return token


def via_unix(request: web.Request) -> bool:
    transport = request.transport
    if transport is None:
        return False
    sock = transport.get_extra_info("socket")
    return sock is not None and sock.family == socket.AF_UNIX


def engine_authenticated(request: web.Request, token: str, ca: bool) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode()):
        return True
    # With an engine CA configured the TLS layer verified any certificate it
    # reports here; no certificate means none was presented.
    transport = request.transport
    return ca and transport is not None and bool(transport.get_extra_info("peercert"))


def access_guard(get_token: Callable[[], str], ca: bool, trust_tcp: bool = False) -> Middleware:
    """``trust_tcp`` treats the data port like the control socket (tests)."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        name = request.match_info.route.name or ""
        if (
            name.startswith(ENGINE)
            and not (trust_tcp or via_unix(request))
            and not engine_authenticated(request, get_token(), ca)
        ):
            raise Unauthorized("this route needs the engine's credential")
        return await handler(request)

    return guard
