"""Downloads to a client that stops reading: cut off, buffers freed."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from stream.config import Config
from stream.state import AUTH, IO_KEY

from .conftest import AddTicket, Client

MiB = 1 << 20


@pytest.fixture
def cfg(cfg: Config) -> Config:
    # Room for two downloads (2 buffers of 1 MiB each).
    cfg.transfer.max_buffer_memory = 4 * cfg.transfer.buffer_size
    return cfg


async def until(cond: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


async def stalled_get(client: Client, path: str) -> socket.socket:
    """A GET whose client never reads (a 4 KiB receive buffer)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (client.server.host, client.server.port))
    await loop.sock_sendall(sock, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


async def test_stalled_download_ends_and_frees_its_buffers(
    client: Client, cfg: Config, image: Any, add_ticket: AddTicket,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As sluice serve runs it (aiohttp's test server cancels the handler of
    # a connection gone, which hides how the download ends).
    assert client.server.runner is not None and client.server.runner.server is not None
    monkeypatch.setattr(client.server.runner.server, "handler_cancellation", False)
    # Sparse: 64 MiB of zeros to send, no disk used; far more than the
    # socket buffers take.
    ticket = await add_ticket(image(64 * MiB), inactivity_timeout=1)
    io = client.app[IO_KEY]
    t = client.app[AUTH].get(ticket)
    sock = await stalled_get(client, f"/images/{ticket}")
    try:
        await until(lambda: t.busy)
        start = time.monotonic()
        await until(lambda: not t.busy, timeout=20)
        # Cut off after 1 to 1.5 s without progress; generous for a loaded host.
        assert time.monotonic() - start < 10
        assert io.buffers_in_use == 0
        assert "the client read nothing for 1 seconds: connection aborted" in caplog.text
        assert "Error handling request" not in caplog.text  # aiohttp's traceback
        # The connection is gone: what the kernel got, then EOF or a reset.
        loop = asyncio.get_running_loop()
        got = 0
        try:
            while chunk := await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10):
                got += len(chunk)
        except ConnectionResetError:
            pass
        assert got < 64 * MiB
    finally:
        sock.close()


async def test_buffer_bound_refuses_then_recovers(
    client: Client, cfg: Config, image: Any, add_ticket: AddTicket
) -> None:
    """Two stalled downloads take all 4 buffers of the bound: a third GET
    gets 503 at once, and works again once they are cut off."""
    ticket = await add_ticket(image(64 * MiB), inactivity_timeout=1)
    t = client.app[AUTH].get(ticket)
    io = client.app[IO_KEY]
    socks = [await stalled_get(client, f"/images/{ticket}") for _ in range(2)]
    try:
        await until(lambda: io.buffers_in_use == 4)
        resp = await client.get(f"/images/{ticket}", headers={"Range": "bytes=0-99"})
        assert resp.status == 503
        assert "try again later" in await resp.text()
        await until(lambda: not t.busy, timeout=20)
        resp = await client.get(f"/images/{ticket}", headers={"Range": "bytes=0-99"})
        assert resp.status == 206
        assert await resp.read() == bytes(100)
        assert io.buffers_in_use == 0
    finally:
        for s in socks:
            s.close()


def test_a_slow_tls_reader_is_not_taken_for_a_stalled_one(tmp_path: Any) -> None:
    """Over TLS the transport's buffer size repeats from slice to slice
    while the client reads: a reader slower than one buffer per inactivity
    timeout (here 4 MiB per second) was cut off as stalled, half way."""
    import ssl

    from .daemon import Daemon, make_cert

    (tmp_path / "tls").mkdir()
    cert = make_cert(tmp_path / "tls")
    conf = tmp_path / "sluice.toml"
    conf.write_text("[transfer]\nbuffer_size = 4194304\n")
    d = Daemon(tmp_path / "data", cert, args=["--config", str(conf)])
    try:
        image = d.images / "slow.raw"
        image.write_bytes(bytes(12 * MiB))
        url = d.add_ticket(image, inactivity_timeout=1)
        ctx = ssl.create_default_context(cafile=cert[0])
        with socket.create_connection(("127.0.0.1", d.port)) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            path = url.split(str(d.port), 1)[1]
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                      .encode())
            got = 0
            start = time.monotonic()
            while chunk := s.recv(65536):
                got += len(chunk)
                # 2 MiB/s: 2 s per 4 MiB buffer, half a second per TLS slice
                time.sleep(max(0.0, start + got / (2 * MiB) - time.monotonic()))
            assert got >= 12 * MiB, (got, time.monotonic() - start)
        assert "read nothing" not in d.read_log()
    finally:
        d.stop()
