"""Re-adding and deleting a ticket while its requests run (found by a
concurrency review, each reproduced against a daemon first).

- A re-add of the same ticket put a new object in the table, looked the
  volume up again, then put the old one back: a request that began in
  between ran on an object nothing tracked.  DELETE, the volume's in-use
  checks and the pool map missed it, and it wrote after its ticket was
  deleted (on a block domain, into the next volume made there).
- DELETE removed whatever held the id when its wait ended: a ticket
  re-added meanwhile.
- A re-add whose old ticket did not stop in time answered 409, but the
  new ticket was live and the old one's volume was never closed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from stream.state import AUTH, POOL

from .conftest import Client, MiB
from .test_copy import new_volume, read_image

TICKET = "5e5e5e5e-0000-4000-8000-000000000001"


async def add(client: Client, ref: dict[str, str], status: int = 200) -> None:
    resp = await client.put(f"/tickets/{TICKET}", json={
        "uuid": TICKET, "size": MiB, "ops": ["write"], "timeout": 60, **ref})
    assert resp.status == status, await resp.text()


def held_body(first: bytes, rest: bytes) -> tuple[asyncio.Event, Callable[[], Any]]:
    """A request body that sends ``first``, then waits for the event."""
    go = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield first
        await go.wait()
        yield rest
    return go, body


async def start_upload(client: Client, first: bytes, rest: bytes
                       ) -> tuple[asyncio.Event, asyncio.Future[Any]]:
    go, body = held_body(first, rest)
    size = len(first) + len(rest)
    upload = asyncio.ensure_future(client.put(
        f"/images/{TICKET}?flush=n", data=body(),
        headers={"Content-Range": f"bytes 0-{size - 1}/*"}))
    app = client.app
    assert app is not None
    for _ in range(200):  # until the daemon counts it as running
        ticket = app[AUTH].peek(TICKET)
        if ticket is not None and ticket.busy:
            break
        await asyncio.sleep(0.01)
    return go, upload


@pytest.fixture
def ref(client: Client, sd: str) -> Any:
    return new_volume(client, sd, MiB)


async def test_a_request_begun_during_a_readd_is_deleted_with_its_ticket(
        client: Client, ref: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = await ref
    await add(client, ref)
    app = client.app
    assert app is not None
    registry = app[POOL].registry
    real_volume = registry.volume
    in_lookup, go_on = threading.Event(), threading.Event()
    calls = []

    def slow_volume(*args: Any) -> Any:  # the re-add's second look-up, held
        calls.append(args)
        if len(calls) == 2:
            in_lookup.set()
            go_on.wait(10)
        return real_volume(*args)

    monkeypatch.setattr(registry, "volume", slow_volume)
    readd = asyncio.ensure_future(add(client, ref))
    await asyncio.to_thread(in_lookup.wait, 0.5)  # the re-add looked up again (old code)
    go, upload = await start_upload(client, b"A" * 4096, b"B" * 4096)
    go_on.set()
    await readd
    monkeypatch.setattr(registry, "volume", real_volume)
    deleted = asyncio.ensure_future(client.delete(f"/tickets/{TICKET}"))
    await asyncio.sleep(0.2)
    go.set()  # the rest of the body, after the DELETE began
    assert (await deleted).status == 204
    assert (await upload).status == 403
    data = await read_image(client, ref, MiB)
    assert b"B" * 4096 not in data  # nothing sent after the DELETE was written


async def test_delete_leaves_a_ticket_readded_meanwhile(client: Client, ref: Any) -> None:
    ref = await ref
    await add(client, ref)
    go, upload = await start_upload(client, b"A" * 4096, b"B" * 4096)
    deleted = asyncio.ensure_future(client.delete(f"/tickets/{TICKET}"))
    await asyncio.sleep(0.2)
    readd = asyncio.ensure_future(add(client, ref))  # waits for the old one to stop
    await asyncio.sleep(0.2)
    go.set()
    await upload
    assert (await deleted).status == 204
    await readd
    resp = await client.get(f"/tickets/{TICKET}")
    assert resp.status == 200, "the re-added ticket went with the deleted one"
    assert (await resp.json())["canceled"] is False


async def test_a_readd_that_times_out_changes_nothing(client: Client, ref: Any) -> None:
    """The old ticket's request outlasts the wait (remove_timeout, 2 s in
    the tests): 409, and the old ticket stays, canceled, until deleted."""
    ref = await ref
    await add(client, ref)
    app = client.app
    assert app is not None
    old = app[AUTH].peek(TICKET)
    assert old is not None
    await client.delete(f"/tickets/{TICKET}")  # nothing runs: gone at once
    await add(client, ref)
    old = app[AUTH].peek(TICKET)
    assert old is not None
    go, upload = await start_upload(client, b"A" * 4096, b"B" * 4096)
    other = await new_volume(client, ref["sd_id"], MiB)  # another path: a replacement
    await add(client, other, status=409)
    resp = await client.get(f"/tickets/{TICKET}")
    assert resp.status == 200
    assert (await resp.json())["canceled"] is True  # the old one, not a live new one
    assert app[AUTH].peek(TICKET) is old
    go.set()
    await upload
    assert (await client.delete(f"/tickets/{TICKET}")).status == 204
    assert old.volume is None  # closed
    await add(client, other)
