"""Where Sluice differed from ovirt-imageio's image and ticket APIs, or
answered bad input with a 500; each test pins the compatible answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from stream.state import CONFIG

from .conftest import AddTicket, Client, MiB

#: Past Python's 4300-digit limit on int(str): int() raises ValueError.
HUGE = "9" * 5000
#: Fits in JSON, overflows float arithmetic on monotonic time.
HUGE_TIMEOUT = 10**400


async def _info(client: Client, ticket: str) -> dict[str, Any]:
    resp = await client.get(f"/tickets/{ticket}")
    assert resp.status == 200, await resp.text()
    info: dict[str, Any] = await resp.json()
    return info


async def _read(client: Client, ticket: str) -> int:
    """GET the image to the end: the connection is then free for the next
    request, which the server handles only once this one has completed."""
    async with client.get(f"/images/{ticket}") as resp:
        await resp.read()
        return resp.status


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Poll ``check`` until true: the server notices a closed socket on its own."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("method,path", [
    pytest.param("PATCH", "/images/{ticket}", id="patch-image"),
    pytest.param("PUT", "/tickets/{ticket}", id="put-ticket"),
    pytest.param("PATCH", "/tickets/{ticket}", id="patch-ticket"),
])
async def test_deeply_nested_json_is_a_400(
    client: Client, image: Any, add_ticket: AddTicket, method: str, path: str
) -> None:
    ticket = await add_ticket(image(data=b"a" * 4096))
    resp = await client.request(method, path.format(ticket=ticket), data="[" * 60_000)
    assert resp.status == 400
    assert "Invalid JSON message" in await resp.text()


async def test_huge_numbers_in_range_headers_are_refused(
    client: Client, image: Any, add_ticket: AddTicket
) -> None:
    path = image(data=b"a" * 8192)
    ticket = await add_ticket(path)
    for header in (f"bytes={HUGE}-", f"bytes=0-{HUGE}"):
        resp = await client.get(f"/images/{ticket}", headers={"Range": header})
        assert resp.status == 416, header
        assert resp.headers["Content-Range"] == "bytes */8192"
    resp = await client.put(f"/images/{ticket}", data=b"b",
                            headers={"Content-Range": f"bytes {HUGE}-*/*"})
    assert resp.status == 400
    assert path.read_bytes() == b"a" * 8192


@pytest.mark.parametrize("name", ["timeout", "inactivity_timeout"])
async def test_huge_ticket_timeouts_are_refused(
    client: Client, image: Any, name: str
) -> None:
    path = image(data=b"a" * 4096)
    ticket = {"uuid": f"t-{name}", "size": 4096, "ops": ["read", "write"],
              "url": f"file://{path}", "timeout": 300, name: HUGE_TIMEOUT}
    resp = await client.put(f"/tickets/t-{name}", json=ticket)
    assert resp.status == 400, await resp.text()
    assert repr(name) in await resp.text()
    assert (await client.get(f"/tickets/t-{name}")).status == 404


async def test_a_zero_inactivity_timeout_is_refused(client: Client, image: Any) -> None:
    """0 s without data fails every upload at once ("no data for 0 s")."""
    path = image(data=b"a" * 4096)
    ticket = {"uuid": "t-idle0", "size": 4096, "ops": ["read", "write"],
              "url": f"file://{path}", "timeout": 300, "inactivity_timeout": 0}
    resp = await client.put("/tickets/t-idle0", json=ticket)
    assert resp.status == 400
    assert "between 1 and" in await resp.text()


async def test_huge_extend_is_refused_and_leaves_the_ticket_usable(
    client: Client, image: Any, add_ticket: AddTicket
) -> None:
    ticket = await add_ticket(image(data=b"a" * 4096))
    resp = await client.patch(f"/tickets/{ticket}", json={"timeout": HUGE_TIMEOUT})
    assert resp.status == 400
    assert await _read(client, ticket) == 200
    assert (await _info(client, ticket))["timeout"] == 300


async def test_extend_moves_expiry_only(
    client: Client, image: Any, add_ticket: AddTicket
) -> None:
    """imageio's PATCH /tickets sets ``expires = now + timeout`` and nothing
    else: ``timeout`` (re-armed after each operation) stays, and the engine
    still sees how long the transfer was idle."""
    ticket = await add_ticket(image(data=b"a" * 4096), timeout=300)
    assert await _read(client, ticket) == 200
    await asyncio.sleep(1.1)  # idle time to measure, in whole seconds
    resp = await client.patch(f"/tickets/{ticket}", json={"timeout": 10})
    assert resp.status == 200
    info = await _info(client, ticket)
    assert info["timeout"] == 300
    assert 1 <= info["idle_time"] < 60  # since the GET, not since some expiry
    assert info["expires"] <= time.monotonic() + 11
    # The next operation re-arms the ticket with its own timeout.
    assert await _read(client, ticket) == 200
    info = await _info(client, ticket)
    assert info["expires"] >= time.monotonic() + 290
    assert info["idle_time"] == 0


async def test_transferred_counts_distinct_bytes_and_zeroing(
    client: Client, image: Any, add_ticket: AddTicket
) -> None:
    """imageio reports the merged byte ranges that completed operations
    covered (zero included), so progress never passes the image size."""
    size = 4 * MiB
    ticket = await add_ticket(image(size), ops=["write"])
    data = b"d" * MiB
    for offset in (0, 0, MiB // 2):  # a retry, then an overlapping write
        resp = await client.put(f"/images/{ticket}", data=data, headers={
            "Content-Range": f"bytes {offset}-{offset + MiB - 1}/*"})
        assert resp.status == 200
    assert (await _info(client, ticket))["transferred"] == MiB + MiB // 2
    resp = await client.patch(f"/images/{ticket}",
                              json={"op": "zero", "offset": 2 * MiB, "size": 2 * MiB})
    assert resp.status == 200
    assert (await _info(client, ticket))["transferred"] == 3 * MiB + MiB // 2
    resp = await client.put(f"/images/{ticket}", data=data[:MiB // 2], headers={
        "Content-Range": f"bytes {3 * MiB // 2}-{2 * MiB - 1}/*"})
    assert resp.status == 200
    assert (await _info(client, ticket))["transferred"] == size

    reader = await add_ticket(image(size), ops=["read"])
    for first, last in ((0, 99), (0, 99), (50, 199)):
        resp = await client.get(f"/images/{reader}", headers={"Range": f"bytes={first}-{last}"})
        assert resp.status == 206
        await resp.read()
    assert (await _info(client, reader))["transferred"] == 200


async def test_connections_counts_open_connections_using_the_ticket(
    client: Client, image: Any, add_ticket: AddTicket
) -> None:
    ticket = await add_ticket(image(data=b"a" * 4096))
    url = client.make_url(f"/images/{ticket}")
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
                for _ in range(2)]
    try:
        for s in sessions:
            async with s.options(url) as resp:
                assert resp.status == 200
                await resp.read()  # all read: the connection stays open
        assert (await _info(client, ticket))["connections"] == 2
        await sessions[0].close()

        async def one_left() -> bool:
            return bool((await _info(client, ticket))["connections"] == 1)

        await _eventually(one_left)
    finally:
        for s in sessions:
            await s.close()


async def test_options_of_read_only_ticket_reports_backend_max_writers(
    client: Client, image: Any, add_ticket: AddTicket
) -> None:
    path = image(data=b"a" * 4096)
    rw = await (await client.options(f"/images/{await add_ticket(path)}")).json()
    ro = await (await client.options(f"/images/{await add_ticket(path, ops=['read'])}")).json()
    assert ro["max_writers"] == rw["max_writers"] >= 1
    assert ro["max_readers"] == rw["max_readers"]


async def test_patch_without_op_says_it_is_missing(
    client: Client, image: Any, add_ticket: AddTicket
) -> None:
    ticket = await add_ticket(image(data=b"a" * 4096))
    resp = await client.patch(f"/images/{ticket}", json={"size": 1})
    assert resp.status == 400
    assert "Missing required value for 'op'" in await resp.text()


@pytest.mark.parametrize("method", ["HEAD", "POST", "DELETE"])
async def test_method_not_allowed_names_the_allowed_ones(
    client: Client, image: Any, add_ticket: AddTicket, method: str
) -> None:
    ticket = await add_ticket(image(data=b"a" * 4096))
    resp = await client.request(method, f"/images/{ticket}")
    assert resp.status == 405
    # RFC 9110 §15.5.6: a 405 carries Allow.
    assert {"GET", "PUT", "PATCH", "OPTIONS"} <= set(resp.headers["Allow"].split(","))


async def test_transferred_counts_a_request_in_progress(
    client: Client, image: Any, add_ticket: AddTicket
) -> None:
    """imageio's transferred includes running operations: the engine polls it
    for its progress bar, and a whole upload may be one request."""
    app = client.app
    assert app is not None
    step = app[CONFIG].transfer.buffer_size
    size = 4 * step
    ticket = await add_ticket(image(size), ops=["write"])
    _, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"PUT /images/{ticket} HTTP/1.1\r\nHost: x\r\n"
                 f"Content-Length: {size}\r\n\r\n".encode())
    writer.write(b"\x01" * (3 * step))
    await writer.drain()
    async with asyncio.timeout(10):  # the first buffers reach the disk
        while not (info := await _info(client, ticket))["transferred"]:
            await asyncio.sleep(0.01)
    assert info["active"] is True
    assert 0 < info["transferred"] < size
    writer.write(b"\x01" * step)
    await writer.drain()
    async with asyncio.timeout(10):
        while (info := await _info(client, ticket))["active"]:
            await asyncio.sleep(0.01)
    assert info["transferred"] == size
    writer.close()
