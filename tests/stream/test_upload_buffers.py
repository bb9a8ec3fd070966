"""Uploads and the bound on transfer buffers: a small body takes a small
buffer, and an upload takes all it needs before reading its body, so the
bound refuses it cleanly (503, nothing written) or not at all."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from stream.config import Config
from stream.state import IO_KEY

from .conftest import AddTicket, Client, MiB, open_put


@pytest.fixture
def cfg(cfg: Config) -> Config:
    # 1 MiB buffers (conftest), write depth 2: a large upload holds 3 MiB.
    cfg.transfer.max_buffer_memory = 4 * MiB
    cfg.transfer.write_depth = 2
    return cfg


async def _until(predicate: Any) -> None:
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the daemon did not get there in 2 s")


async def test_small_stalled_uploads_leave_room(
        client: Client, image: Any, add_ticket: AddTicket) -> None:
    """Each 2-byte PUT that sent 1 byte and stopped took a whole 1 MiB
    buffer: 4 of them held the bound, and every other transfer got 503."""
    app = client.app
    assert app is not None
    io = app[IO_KEY]
    stalled = []
    for _ in range(8):
        ticket = await add_ticket(image(4096))
        stalled.append((await open_put(client, f"/images/{ticket}", 2, b"x"))[1])
    await _until(lambda: io.buffers_in_use == 8)
    assert io.bytes_in_use <= 8 * 64 * 1024
    other = await add_ticket(image(data=b"y" * 4096))
    resp = await client.get(f"/images/{other}")
    assert resp.status == 200, await resp.text()
    resp = await client.put(f"/images/{other}", data=b"z" * 4096)
    assert resp.status == 200, await resp.text()
    for writer in stalled:
        writer.close()
    await _until(lambda: io.buffers_in_use == 0)


async def test_upload_at_the_bound_is_refused_before_its_body(
        client: Client, image: Any, add_ticket: AddTicket) -> None:
    """With one large upload holding its buffers, a second one did not fit
    but started anyway: it got 503 after its first MiB was on disk."""
    app = client.app
    assert app is not None
    io = app[IO_KEY]
    first = await add_ticket(image(8 * MiB))
    _, holder = await open_put(client, f"/images/{first}", 8 * MiB, b"a" * (2 * MiB + 100))
    await _until(lambda: io.bytes_in_use == 3 * MiB)
    path: Path = image(data=b"\0" * (8 * MiB))
    second = await add_ticket(path)
    resp = await client.put(f"/images/{second}", data=b"b" * (8 * MiB))
    assert resp.status == 503, await resp.text()
    assert path.read_bytes() == b"\0" * (8 * MiB)  # nothing written
    assert io.bytes_in_use == 3 * MiB  # the refused one gave back what it took
    holder.close()
    await _until(lambda: io.buffers_in_use == 0)
    resp = await client.put(f"/images/{second}", data=b"b" * (8 * MiB))
    assert resp.status == 200, await resp.text()


async def test_stalled_uploads_hold_one_buffer_until_their_first_write(
        client: Client, image: Any, add_ticket: AddTicket) -> None:
    """Taking every buffer before the body (7af708d) made a chunked or large
    upload that sent one byte and stopped hold three, and a small zstd one
    its whole output buffer: fewer stalled clients filled the bound."""
    app = client.app
    assert app is not None
    io = app[IO_KEY]
    ticket = await add_ticket(image(8 * MiB))
    heads = [
        "Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n",  # chunked, one byte
        f"Content-Length: {8 * MiB}\r\n\r\nx",  # a large body, one byte of it
        "Content-Encoding: zstd\r\nContent-Length: 10\r\n\r\n\x28\xb5",  # small zstd
    ]
    writers = []
    for head in heads:
        _, w = await asyncio.open_connection(client.host, client.port)
        w.write(f"PUT /images/{ticket} HTTP/1.1\r\nHost: x\r\n{head}".encode("latin-1"))
        await w.drain()
        writers.append(w)
    await _until(lambda: io.buffers_in_use == 3)
    await asyncio.sleep(0.2)
    assert io.buffers_in_use == 3  # one each, none taken since
    assert io.bytes_in_use == 2 * MiB + 64 * 1024
    for w in writers:
        w.close()
    await _until(lambda: io.buffers_in_use == 0)
