"""Regressions found by a bug hunt: each test failed on the code before the fix."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import zstandard

from volume import open_volume

from .conftest import AddTicket, Client

MiB = 1 << 20


async def test_head_is_not_a_get(client: Client, image: Any, add_ticket: AddTicket) -> None:
    ticket = await add_ticket(image(data=b"a" * 65536))
    resp = await client.head(f"/images/{ticket}")
    assert resp.status == 405  # as imageio; aiohttp's automatic HEAD ran GET


async def test_readding_a_ticket_keeps_its_transfers(
        client: Client, image: Any, add_ticket: AddTicket) -> None:
    """vdsm re-adds a ticket on retries: the upload in flight stays the
    ticket's, so a DELETE still waits for it (it did not, and closed the
    volume under it)."""
    path = image(size=8 * MiB)
    ticket = await add_ticket(path)
    info = await (await client.get(f"/tickets/{ticket}")).json()
    gate = asyncio.Event()

    async def slow() -> Any:
        yield b"\xee" * MiB
        await gate.wait()
        yield b"\xee" * MiB

    upload = asyncio.ensure_future(client.put(f"/images/{ticket}", data=slow(), headers={
        "Content-Range": f"bytes 0-{2 * MiB - 1}/*", "Content-Length": str(2 * MiB)}))
    for _ in range(100):
        if (await (await client.get(f"/tickets/{ticket}")).json())["active"]:
            break
        await asyncio.sleep(0.01)
    readd = {k: info[k] for k in ("uuid", "size", "url", "ops", "timeout")}
    assert (await client.put(f"/tickets/{ticket}", json=readd)).status == 200
    assert (await client.get(f"/tickets/{ticket}")).status == 200
    assert (await (await client.get(f"/tickets/{ticket}")).json())["active"]
    delete = asyncio.ensure_future(client.delete(f"/tickets/{ticket}"))
    await asyncio.sleep(0.2)
    assert not delete.done(), "the DELETE waits for the upload of the re-added ticket"
    gate.set()
    resp = await upload  # canceled by the DELETE, as imageio's DELETE does
    assert resp.status == 403 and "was canceled" in await resp.text()
    assert (await delete).status == 204  # once the upload stopped


async def test_a_cancel_stops_a_zstd_upload(client: Client, image: Any,
                                            add_ticket: AddTicket) -> None:
    """One buffer of zstd can decode to the whole ticket: the cancel is
    checked per decoded piece, not per compressed buffer."""
    size = 1 << 30
    path = image(size=size)
    ticket = await add_ticket(path)
    body = zstandard.ZstdCompressor(level=1).compress(bytes(size))
    assert len(body) < MiB

    async def cancel_soon() -> int:
        await asyncio.sleep(0.2)
        return (await client.delete(f"/tickets/{ticket}")).status

    canceling = asyncio.ensure_future(cancel_soon())
    resp = await client.put(f"/images/{ticket}", data=body, headers={
        "Content-Encoding": "zstd", "Content-Range": f"bytes 0-{size - 1}/*"})
    assert await canceling == 204
    assert resp.status == 403 and "was canceled" in await resp.text()


def test_zero_next_to_a_write_in_the_same_block(tmp_path: Path) -> None:
    """A zero of part of a block and a write of the rest, at once: the
    write's read-modify-write must not bring the old bytes back."""
    path = tmp_path / "v.img"
    path.write_bytes(os.urandom(4 * MiB))
    vol = open_volume(str(path))
    bs = vol.capabilities.block_size
    lost = 0
    try:
        for i in range(300):
            off = (i % 1000) * bs * 2 + bs
            start = threading.Barrier(2)

            def zero(start: threading.Barrier = start, off: int = off) -> None:
                start.wait()
                vol.zero(off, 100)

            def write(start: threading.Barrier = start, off: int = off) -> None:
                start.wait()
                vol.write(off + 100, memoryview(b"\x11" * (bs - 100)))

            threads = [threading.Thread(target=zero), threading.Thread(target=write)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            buf = bytearray(bs)
            vol.readinto(off, memoryview(buf))
            lost += buf[:100] != bytes(100)
    finally:
        vol.close()
    assert bs > 1 and lost == 0
