"""Edges of the image PUT that imageio refuses and Sluice took: body codings
it does not decode, a Content-Range past its own total, HEAD on queries,
and an idle deadline that fired early."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import zstandard

from .conftest import AddTicket, Client


async def _raw_put(client: Client, target: str, headers: list[str], body: bytes) -> int:
    """Status of a PUT sent as is: aiohttp's client would fix the headers."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        head = "".join(f"{h}\r\n" for h in [f"PUT {target} HTTP/1.1", "Host: x", *headers])
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()
        return int((await reader.readline()).split()[1])
    finally:
        writer.close()


def _chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n"


async def test_transfer_coding_besides_chunked_is_refused(
        client: Client, image: Any, add_ticket: AddTicket) -> None:
    """aiohttp removes the chunking only: the gzip bytes were stored as the
    image, with 200."""
    path: Path = image(data=b"\0" * 4096)
    ticket = await add_ticket(path)
    gz = b"\x1f\x8b\x08\x00" + b"g" * 60
    status = await _raw_put(client, f"/images/{ticket}",
                            ["Transfer-Encoding: gzip, chunked"], _chunked(gz))
    assert status == 501
    assert path.read_bytes() == b"\0" * 4096


@pytest.mark.parametrize("lines", [
    pytest.param(["Content-Encoding: zstd", "Content-Encoding: zstd"], id="two-lines"),
    pytest.param(["Content-Encoding: zstd, zstd"], id="one-line"),
])
async def test_zstd_twice_is_refused(client: Client, image: Any, add_ticket: AddTicket,
                                     lines: list[str]) -> None:
    """Two header lines were read as one zstd: the inner frame was stored."""
    path: Path = image(data=b"\0" * 4096)
    ticket = await add_ticket(path)
    c = zstandard.ZstdCompressor()
    body = c.compress(c.compress(b"d" * 4096))
    status = await _raw_put(client, f"/images/{ticket}",
                            [*lines, f"Content-Length: {len(body)}"], body)
    assert status == 415
    assert path.read_bytes() == b"\0" * 4096


async def test_ovf_store_refuses_stacked_codings(client: Client) -> None:
    pool = await (await client.get("/pool")).json()
    (sd,) = pool["domains"]
    status = await _raw_put(client, f"/domains/{sd}/ovf-store",
                            ["Transfer-Encoding: gzip, chunked"], _chunked(b"x" * 100))
    assert status == 501
    info = await (await client.get(f"/domains/{sd}/ovf-store/info")).json()
    assert not any(s["valid"] for s in info["stores"]), info  # nothing committed


async def test_content_range_past_its_total_is_refused(
        client: Client, image: Any, add_ticket: AddTicket) -> None:
    """``bytes 100-199/50``: imageio answers 400; Sluice wrote the 100 bytes."""
    path: Path = image(data=b"\0" * 4096)
    ticket = await add_ticket(path)
    resp = await client.put(f"/images/{ticket}", data=b"c" * 100,
                            headers={"Content-Range": "bytes 100-199/50"})
    assert resp.status == 400
    assert path.read_bytes() == b"\0" * 4096


@pytest.mark.parametrize("query", ["extents", "checksum"])
async def test_no_head_on_queries(client: Client, image: Any, add_ticket: AddTicket,
                                  query: str) -> None:
    """HEAD ran the whole query (a checksum hashed the image); imageio: 405."""
    ticket = await add_ticket(image(4096))
    resp = await client.head(f"/images/{ticket}/{query}")
    assert resp.status == 405


async def test_idle_deadline_is_never_early(
        client: Client, image: Any, add_ticket: AddTicket) -> None:
    """A byte every 0.6 s with a 1 s inactivity timeout: the deadline moved
    at most once a second, so it fired 1 s after its last move, 0.4 s after
    the last byte."""
    path: Path = image(4096)
    ticket = await add_ticket(path, inactivity_timeout=1)

    async def slow() -> Any:
        for _ in range(5):
            yield b"s"
            await asyncio.sleep(0.6)

    resp = await client.put(f"/images/{ticket}", data=slow(),
                            headers={"Content-Range": "bytes 0-4/*"})
    assert resp.status == 200, await resp.text()
    assert path.read_bytes()[:5] == b"sssss"
