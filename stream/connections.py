"""Bounds on the data listener's connections.

Anyone who reaches the data port may connect, with no credential, and each
connection costs a file descriptor.  Without bounds, ~1000 connections that
never send a byte used up the daemon's descriptors (soft limit 1024), and
the control socket, volume opens and the domain monitor failed with EMFILE.

- At start the soft ``RLIMIT_NOFILE`` goes up to the hard limit.
- A new connection that has not sent a whole request head within
  ``request_head_timeout`` is closed (aiohttp's own timer on a new
  connection is its keep-alive timeout, an hour).  Once a request came, the
  connection keeps aiohttp's keep-alive timeout: imageio clients keep theirs
  open between range requests.
- Past ``max_connections`` (and never closer than :data:`FD_RESERVE` to the
  descriptor limit) the data connection silent longest, with no request in
  progress or arriving, is closed to make room; with none, the new one is
  closed at once.  Control
  socket connections are never closed for this.
- Over TLS a connection counts from its accept (see ``handshake``), and a
  handshake still going on after :data:`QUIET` seconds may be closed to
  make room like an idle connection.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web
from aiohttp.web_request import BaseRequest

from .handshake import Handshake
from .middleware import error_response

log = logging.getLogger(__name__)

#: Descriptors kept for everything but data connections: control socket
#: connections, volumes (one or two per ticket), OVF stores, the loop's own.
#: 256 leaves room for a hundred concurrent transfers' volumes.
FD_RESERVE = 256


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft limit on open files to the hard one; return both."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, hard, e)
    return soft, hard


def connection_cap(configured: int) -> int:
    """``configured``, lowered to keep :data:`FD_RESERVE` descriptors free."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(1, min(configured, soft - FD_RESERVE))


class _Refused(asyncio.Protocol):
    """A connection past the cap: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).abort()


#: Seconds a connection must have been silent to be closed at the cap: one
#: that is sending a request head (it arrives in one piece from any real
#: client) is never taken for an idle one.
QUIET = 1.0


class _Heard(web.RequestHandler):
    """aiohttp's handler, noting when it last received bytes (its parser
    keeps a half-received head out of sight), and in ``live`` while its
    connection is open: the guard's count, kept as connections come and go
    rather than counted at each accept.  In order of connection: of those
    silent equally long (the loop's clock has millisecond steps), the
    oldest is evicted."""

    __slots__ = ("_live", "heard")

    def __init__(self, live: dict[_Heard, None], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.heard = self._loop.time()
        self._live = live

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._live[self] = None

    def connection_lost(self, exc: BaseException | None) -> None:
        self._live.pop(self, None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.heard = self._loop.time()
        super().data_received(data)

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None
                     ) -> web.StreamResponse:
        """A request aiohttp's parser refused (a malformed head or chunk
        framing) gets the daemon's JSON error, with one log line, instead
        of aiohttp's text and a logged traceback.  Anything else stays
        aiohttp's (the errors middleware answers every handler error)."""
        if not 400 <= status < 500 or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        # aiohttp's message marks the spot with a caret on a line of its own.
        lines = (message or str(exc or "")).splitlines()
        detail = " ".join(" ".join(line.split()) for line in lines
                          if line.strip(" ^")) or "malformed request"
        log.warning("malformed HTTP request from %s: %d %s", request.remote, status, detail)
        try:
            code = HTTPStatus(status).phrase.lower().replace(" ", "-")
        except ValueError:
            code = "bad-request"
        resp = error_response(cast(web.Request, request), status, code,
                              f"malformed HTTP request: {detail}")
        resp.force_close()  # the stream cannot be parsed further
        return resp


class Guard:
    """The data listener's protocol factory, in front of aiohttp's; with
    ``tls``, the listener itself is plain and each connection is upgraded
    here (see :class:`Handshake`)."""

    def __init__(self, server: web.Server, head_timeout: float, max_connections: int,
                 tls: ssl.SSLContext | None = None) -> None:
        self._server = server
        self._head_timeout = head_timeout
        self._max = max_connections
        self._tls = tls
        self._full = False
        #: Data connections open (the control socket's, aiohttp's own
        #: handlers from its own site, are never counted nor closed).
        self._live: dict[_Heard, None] = {}
        #: TLS connections accepted whose handshake is not done, in accept
        #: order: the loop's clock has millisecond steps, so handshakes
        #: accepted together tie, and the first accepted must go first.
        self._handshakes: dict[Handshake, None] = {}
        self.refused = 0
        self.timed_out = 0
        self.evicted = 0

    def __call__(self) -> asyncio.BaseProtocol:
        if len(self._live) + len(self._handshakes) >= self._max:
            if not self._full:
                self._full = True
                log.warning("data connections at the limit (%d): closing idle ones to make "
                            "room, else refusing new ones", self._max)
            if not self._evict_idle():
                self.refused += 1
                return _Refused()
        elif self._full:
            self._full = False
            log.info("data connections below the limit again (%d refused)", self.refused)
        if self._tls is not None:
            handshake = Handshake(self, self._tls, self._head_timeout)
            self._handshakes[handshake] = None
            return handshake
        handler = self.handler()
        asyncio.get_running_loop().call_later(self._head_timeout, self._check_head, handler)
        return handler

    def handler(self) -> _Heard:
        """A new aiohttp handler, as web.Server.__call__ makes them, with the
        time of the last bytes."""
        return _Heard(self._live, self._server, loop=self._server._loop, **self._server._kwargs)

    def upgraded(self, handshake: Handshake, handler: web.RequestHandler | None) -> None:
        """``handshake`` ended: with ``handler`` serving it, or closed."""
        self._handshakes.pop(handshake, None)
        if handler is not None:
            left = handshake.since + self._head_timeout - asyncio.get_running_loop().time()
            asyncio.get_running_loop().call_later(max(left, 0), self._check_head, handler)

    def close(self) -> None:
        """Close the connections still in their handshake (at shutdown)."""
        for handshake in list(self._handshakes):
            handshake.abort()

    def _evict_idle(self) -> bool:
        """Close the data connection silent longest (at least :data:`QUIET`
        seconds) with no request in progress, if any: one in its TLS
        handshake counts as silent since its accept.

        One cheap request per connection (GET /info/, no credential) would
        otherwise keep each slot for aiohttp's keep-alive time, an hour, and
        every new client, transfers included, would be refused.  A client
        whose idle connection goes opens another when it next needs one
        (imageio's clients and ours do)."""
        now = asyncio.get_running_loop().time()
        idle: list[tuple[float, _Heard | Handshake]] = [
            (h.heard, h) for h in self._live
            if h.transport is not None and not h._request_in_progress and not h._messages
            and now - h.heard >= QUIET]
        idle += [(hs.since, hs) for hs in self._handshakes if now - hs.since >= QUIET]
        if not idle:
            return False
        self.evicted += 1
        _, oldest = min(idle, key=lambda pair: pair[0])
        if isinstance(oldest, Handshake):
            oldest.abort()
        else:
            oldest.force_close()
        return True

    def _check_head(self, handler: web.RequestHandler) -> None:
        # aiohttp counts the request heads it parsed on the connection.
        if handler.transport is not None and handler._request_count == 0:
            self.timed_out += 1
            peer = handler.transport.get_extra_info("peername")
            log.debug("closing a connection from %s: no request within %g s",
                     peer, self._head_timeout)
            handler.force_close()
