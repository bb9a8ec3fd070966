"""TLS handshakes done by the data port's guard (``stream.handshake``), on
both event loops the daemon may run: uvloop's, and asyncio's own."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, cast

import pytest
import uvloop
from aiohttp import web

from stream.handshake import Handshake

from .daemon import make_cert

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


class Echo(asyncio.Protocol):
    """Answers once it has a whole request head, as a handler would."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None, "data before connection_made"
        self.received += data
        if b"\r\n\r\n" in self.received:
            self.transport.write(ANSWER)
            self.transport.close()


class Owner:
    def __init__(self) -> None:
        self.handlers: list[Echo] = []
        self.ended: list[bool] = []

    def handler(self) -> web.RequestHandler:
        self.handlers.append(Echo())
        return cast(web.RequestHandler, self.handlers[-1])

    def upgraded(self, handshake: Handshake, handler: Any) -> None:
        self.ended.append(handler is not None)


def server_context(tmp_path: Path) -> tuple[str, ssl.SSLContext]:
    """A new certificate, and a server context with it."""
    cert, key = make_cert(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return cert, ctx


def run(new_loop: Callable[[], asyncio.AbstractEventLoop],
        main: Coroutine[Any, Any, None]) -> None:
    loop = new_loop()
    try:
        loop.run_until_complete(main)
    finally:
        loop.close()


def clients(port: int, cafile: str, count: int, results: list[bytes]) -> None:
    """``count`` HTTPS requests, each sent as the handshake ends (often in
    the same read as the client's last handshake message)."""
    ctx = ssl.create_default_context(cafile=cafile)
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := tls.recv(4096):
                answer += chunk
            results.append(answer)


@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop],
                         ids=["asyncio", "uvloop"])
def test_every_request_reaches_its_handler(
        tmp_path: Path, new_loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
    """uvloop reads the ClientHello as soon as ``connection_made`` returns,
    paused or not (in a task, 3 handshakes of 40 hung); asyncio hands over
    the first request before the handshake's waiter wakes anyone."""
    cert, ctx = server_context(tmp_path)
    owner = Owner()
    results: list[bytes] = []

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(
            lambda: Handshake(owner, ctx, 10), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        thread = threading.Thread(target=clients, args=(port, cert, 40, results))
        thread.start()
        while thread.is_alive():
            await asyncio.sleep(0.05)
        server.close()

    run(new_loop, main())
    assert results == [ANSWER] * 40
    assert owner.ended == [True] * 40
    assert all(h.received.startswith(b"GET / HTTP/1.1\r\n") for h in owner.handlers)


def test_a_silent_connection_times_out(tmp_path: Path) -> None:
    _, ctx = server_context(tmp_path)
    owner = Owner()

    async def main() -> bytes:
        server = await asyncio.get_running_loop().create_server(
            lambda: Handshake(owner, ctx, 0.5), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(reader.read(), 10)  # b"" once closed
        finally:
            writer.close()
            server.close()

    assert uvloop.run(main()) == b""
    assert owner.ended == [False]
    assert owner.handlers == []


@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop],
                         ids=["asyncio", "uvloop"])
@pytest.mark.parametrize("how", ["fin", "reset"])
def test_a_connection_closed_at_once_is_no_handler(
        tmp_path: Path, new_loop: Callable[[], asyncio.AbstractEventLoop], how: str) -> None:
    """A client that connects and closes (a health check, a port scan):
    uvloop reads its FIN before the TLS layer starts, and its start_tls
    returned a closed transport, which got a handler that no one ever
    removed.  1000 of them held every place under the cap for good (found
    by a review); a reset made each one log a traceback."""
    _, ctx = server_context(tmp_path)
    owner = Owner()
    errors: list[dict[str, Any]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: errors.append(context))
        server = await loop.create_server(lambda: Handshake(owner, ctx, 10), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", port))
            if how == "reset":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        for _ in range(250):
            if len(owner.ended) == 20:
                break
            await asyncio.sleep(0.02)
        server.close()

    run(new_loop, main())
    assert owner.ended == [False] * 20
    assert owner.handlers == []
    assert errors == []
