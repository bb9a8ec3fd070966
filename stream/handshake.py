"""TLS handshakes on the data port, done by its guard so that they count.

A listener given ``ssl=`` shows a connection to its protocol only once the
handshake is done: until then it is neither counted nor closable, and 600
connections that never sent a ClientHello ran the daemon out of
descriptors past its connection cap.  So the data listener is plain, and
each connection starts as a :class:`Handshake` on its raw transport
(counted from its accept, closable), which then hands the TLS transport
to aiohttp's handler.  The handshake must end within the request head
timeout.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Coroutine, Generator
from typing import Any, Generic, Protocol, TypeVar, cast

from aiohttp import web

log = logging.getLogger(__name__)

T = TypeVar("T")


class Owner(Protocol):
    """What a handshake reports to (the connection guard)."""

    def handler(self) -> web.RequestHandler:
        """A new handler for an upgraded connection."""

    def upgraded(self, handshake: Handshake, handler: web.RequestHandler | None) -> None:
        """``handshake`` ended: with ``handler`` serving it, or closed."""


class Handshake(asyncio.Protocol):
    """A TLS connection from its accept to the end of its handshake."""

    def __init__(self, owner: Owner, tls: ssl.SSLContext, timeout: float) -> None:
        self._owner = owner
        self._tls = tls
        self._timeout = timeout
        self.since = asyncio.get_running_loop().time()
        self._raw: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None
        self._peer: object = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw = self._raw = cast(asyncio.Transport, transport)
        self._peer = raw.get_extra_info("peername")  # not after it closed
        early = _Early()
        try:
            # Begun here, not in a task: the TLS layer must own the
            # transport before the loop reads the ClientHello (uvloop starts
            # reading once this returns, whatever it paused; in a task, 3
            # handshakes of 40 lost their ClientHello and hung).
            started = _Started(asyncio.get_running_loop().start_tls(
                raw, early, self._tls, server_side=True, ssl_handshake_timeout=self._timeout))
        except Exception as e:
            self._failed(e)
            return
        self._task = asyncio.ensure_future(self._finish(started, early))

    def connection_lost(self, exc: Exception | None) -> None:
        """The raw transport closed before the TLS layer took it."""
        self.abort()

    def abort(self) -> None:
        """Close the connection; the handshake fails."""
        if self._raw is not None:
            self._raw.abort()
        if self._task is not None:
            self._task.cancel()
        self._owner.upgraded(self, None)

    async def _finish(self, started: _Started[asyncio.Transport | None], early: _Early) -> None:
        try:
            transport = await started
            # asyncio: None; uvloop: its transport, closed (the waiter got
            # None from connection_lost during the handshake).
            if transport is None or transport.is_closing():
                raise ConnectionAbortedError("closed during the handshake")
        except (Exception, asyncio.CancelledError) as e:
            self._failed(e)
            return
        handler = self._owner.handler()
        transport.set_protocol(handler)
        self._owner.upgraded(self, handler)
        handler.connection_made(transport)
        early.hand_over(handler)

    def _failed(self, e: BaseException) -> None:
        assert self._raw is not None
        self._raw.abort()
        self._owner.upgraded(self, None)
        peer = self._peer
        if isinstance(e, (OSError, asyncio.CancelledError)):  # ssl.SSLError included
            log.debug("TLS handshake with %s failed: %r", peer, e)
        else:
            log.error("TLS handshake with %s failed", peer, exc_info=e)


class _Early(asyncio.Protocol):
    """What the TLS layer delivers between the end of the handshake and the
    handler taking over: the client's first request may come with its last
    handshake message, and the plain loop passes it on at once."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.eof = False
        self.lost: list[Exception | None] = []

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def eof_received(self) -> bool | None:
        self.eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)

    def hand_over(self, handler: asyncio.Protocol) -> None:
        for data in self.data:
            handler.data_received(data)
        if self.eof:
            handler.eof_received()
        if self.lost:
            handler.connection_lost(self.lost[0])


_RUNNING = object()


class _Started(Generic[T]):
    """A coroutine run at once up to its first suspension, then awaited
    like any: what Python 3.12's eager tasks do.  Its exceptions before
    that suspension are raised here."""

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self._coro = coro
        self._result: Any = _RUNNING
        try:
            self._pending = coro.send(None)
        except StopIteration as stop:
            self._result = stop.value

    def __await__(self) -> Generator[Any, Any, T]:
        if self._result is not _RUNNING:
            return cast(T, self._result)
        coro, pending = self._coro, self._pending
        while True:  # as ``yield from coro`` would, had we not begun it
            try:
                sent = yield pending
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as e:
                try:
                    pending = coro.throw(e)
                except StopIteration as stop:
                    return cast(T, stop.value)
            else:
                try:
                    pending = coro.send(sent)
                except StopIteration as stop:
                    return cast(T, stop.value)
