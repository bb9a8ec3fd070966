"""A buffer goes back to the pool only once no worker writes into it, and
always goes back (found by a review of this session's checksum and
download changes; each test failed on that code)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

from stream import checksum as checksum_mod
from stream import download
from stream.io import IO
from volume.errors import Forbidden
from volume.memory import MemoryVolume

from .conftest import Client
from .test_copy import new_id, new_volume, write_image

MiB = 1 << 20


class SlowVolume(MemoryVolume):
    """Each read takes 0.5 s; ``in_read`` is set once one has begun."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.in_read = threading.Event()

    def readinto(self, offset: int, buf: Any) -> int:
        self.in_read.set()
        time.sleep(0.5)
        return super().readinto(offset, buf)


class Sink:
    async def write(self, data: memoryview) -> None:
        pass

    def holding(self) -> bool:
        return False


async def cancel_while_reading(vol: SlowVolume, task: asyncio.Future[Any]) -> None:
    await asyncio.to_thread(vol.in_read.wait, 5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_canceled_checksum_keeps_its_buffer_until_its_worker_ends() -> None:
    io = IO(2, MiB, 8)
    vol = SlowVolume(b"x" * (4 * MiB))
    await cancel_while_reading(vol, asyncio.ensure_future(checksum_mod.checksum(
        io, vol, 4 * MiB, "blake2b", MiB, lambda: None, step=MiB)))
    other = io.get_buffer(MiB)  # the next request that needs a block-size buffer
    other[:4] = b"OOOO"
    await asyncio.sleep(1)  # a worker still hashing into it would overwrite it
    assert other[:4] == b"OOOO"
    io.put_buffer(other)


async def test_a_canceled_send_waits_for_its_reads_and_returns_its_buffers() -> None:
    io = IO(2, MiB, 8)
    vol = SlowVolume(b"z" * (8 * MiB))
    await cancel_while_reading(vol, asyncio.ensure_future(
        download.send(Sink(), io, vol, 0, 8 * MiB, lambda: None)))
    assert io.buffers_in_use == 0


async def test_a_send_its_ticket_stops_returns_every_buffer() -> None:
    io = IO(2, MiB, 8)
    calls = []

    def check() -> None:  # the ticket is canceled after the first buffer
        calls.append(1)
        if len(calls) == 2:
            raise Forbidden("Transfer x was canceled")

    with contextlib.suppress(Forbidden):
        await download.send(Sink(), io, MemoryVolume(b"y" * (8 * MiB)), 0, 8 * MiB, check)
    assert io.buffers_in_use == 0


async def test_downloads_canceled_by_their_ticket_leak_no_buffer(
        client: Client, sd: str) -> None:
    """Each one kept a buffer out of transfer.max_buffer_memory: after
    about 128 such cancels, every transfer would get 503."""
    from stream.state import IO_KEY

    ref = await new_volume(client, sd, 16 * MiB)
    await write_image(client, ref, 16 * MiB, {0: b"d" * (16 * MiB)})
    app = client.app
    assert app is not None
    io = app[IO_KEY]
    for _ in range(3):
        t = new_id()
        resp = await client.put(f"/tickets/{t}", json={
            "uuid": t, "size": 16 * MiB, "ops": ["read"], "timeout": 60, **ref})
        assert resp.status == 200
        resp = await client.get(f"/images/{t}")
        await resp.content.readexactly(MiB)  # the download is running
        await client.delete(f"/tickets/{t}")  # the engine cancels the transfer
        with contextlib.suppress(Exception):
            await resp.read()
        resp.close()
    for _ in range(50):
        if io.buffers_in_use == 0:
            break
        await asyncio.sleep(0.05)
    assert io.buffers_in_use == 0
