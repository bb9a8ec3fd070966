"""``GET /images/{ticket}/checksum``: hashed piece by piece on the shared
executor, so other work interleaves and a client gone stops the hash."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ovirt_imageio._internal import blkhash as imageio_blkhash

from stream.config import Config
from stream.state import AUTH
from stream.wire.blkhash import BlockHash

from .conftest import AddTicket, Client

MiB = 1 << 20


class SlowHash:
    """Make every block hash take ``delay`` seconds (in the worker thread)
    and count the blocks hashed and the workers hashing at once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, delay: float) -> None:
        self.blocks = 0
        self.busy = 0
        self.most_busy = 0
        lock = threading.Lock()
        update = BlockHash.update

        def slow_update(h: BlockHash, block: Any) -> None:
            with lock:
                self.busy += 1
                self.most_busy = max(self.most_busy, self.busy)
            try:
                time.sleep(delay)
                update(h, block)
            finally:
                with lock:
                    self.busy -= 1
                    self.blocks += 1

        monkeypatch.setattr(BlockHash, "update", slow_update)


async def until(cond: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


def data_image(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.write(os.urandom(size))


@pytest.mark.parametrize("block_size,step", [
    pytest.param(MiB, MiB, id="one-block-pieces"),
    pytest.param(MiB, 3 * MiB, id="three-block-pieces"),
    pytest.param(3 * MiB, MiB, id="step-below-block"),
    pytest.param(3 * MiB, 8 * MiB, id="step-not-a-block-multiple"),
])
async def test_pieces_do_not_change_the_result(
    client: Client, cfg: Config, image: Any, add_ticket: AddTicket, block_size: int, step: int
) -> None:
    cfg.transfer.checksum_step = step
    path = image(11 * MiB + 4097)  # a short last block, holes and data
    with open(path, "r+b") as f:
        for at in (0, 4 * MiB + 100, 9 * MiB):
            f.seek(at)
            f.write(os.urandom(MiB))
    ticket = await add_ticket(path)
    resp = await client.get(f"/images/{ticket}/checksum",
                            params={"block_size": str(block_size)})
    assert resp.status == 200
    theirs = imageio_blkhash.checksum(str(path), block_size=block_size)
    assert await resp.json() == theirs
    resp = await client.get(f"/images/{ticket}/checksum",
                            params={"block_size": str(block_size), "algorithm": "xxh3_128"})
    h = BlockHash("xxh3_128", block_size)
    data = path.read_bytes()
    for at in range(0, len(data), block_size):
        h.update(data[at:at + block_size])
    assert await resp.json() == h.result()


async def test_control_request_interleaves_with_checksums(
    client: Client, cfg: Config, image: Any, add_ticket: AddTicket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As many checksums as workers: each hashes 16 blocks of 0.15 s (2.4 s
    in all); a control request waits for one piece (0.15 s), not for a
    whole checksum."""
    cfg.transfer.checksum_step = MiB
    blocks, delay = 16, 0.15
    path = image()
    data_image(path, blocks * MiB)
    ticket = await add_ticket(path)
    slow = SlowHash(monkeypatch, delay)
    workers = cfg.transfer.io_workers
    params = {"block_size": str(MiB), "algorithm": "xxh3_128"}
    tasks = [asyncio.ensure_future(client.get(f"/images/{ticket}/checksum", params=params))
             for _ in range(workers)]
    await until(lambda: slow.busy == workers)  # every worker is hashing
    start = time.monotonic()
    await add_ticket(image(MiB))  # resolves its path on the executor
    elapsed = time.monotonic() - start
    assert not any(t.done() for t in tasks), "the control request waited for a checksum"
    # Generous: 8 pieces; a whole checksum is 16.
    assert elapsed < 8 * delay
    answers = [await (await t).json() for t in tasks]
    assert all(a == answers[0] for a in answers)
    assert slow.blocks == workers * blocks


@pytest.mark.parametrize("cancels", [
    pytest.param(True, id="handler-canceled"),  # aiohttp's test server does this
    pytest.param(False, id="handler-not-canceled"),  # sluice serve: aiohttp's default
])
async def test_client_gone_stops_the_checksum(
    client: Client, cfg: Config, image: Any, add_ticket: AddTicket,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, cancels: bool,
) -> None:
    """16 blocks of 0.1 s: the client leaves during the first one."""
    assert client.server.runner is not None and client.server.runner.server is not None
    monkeypatch.setattr(client.server.runner.server, "handler_cancellation", cancels)
    cfg.transfer.checksum_step = MiB
    blocks = 16
    path = image()
    data_image(path, blocks * MiB)
    ticket = await add_ticket(path)
    slow = SlowHash(monkeypatch, 0.1)
    server = client.server
    _, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(f"GET /images/{ticket}/checksum?block_size={MiB} HTTP/1.1\r\n"
                 f"Host: x\r\n\r\n".encode())
    await until(lambda: slow.blocks >= 1)
    writer.close()
    await writer.wait_closed()
    t = client.app[AUTH].get(ticket)
    await until(lambda: not t.busy)
    await asyncio.sleep(2.5)  # a hash going on would be done by now
    # The piece running when the client left, and maybe the next one.
    assert slow.blocks <= 4
    assert "Error handling request" not in caplog.text  # aiohttp's traceback
