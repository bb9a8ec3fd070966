"""OVF store updates and clients that misbehave: silent, malformed, gone
while waiting, or trickling; each is refused as the client's fault, and
the previous store stays served, with both copies valid."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from stream import ovf
from stream.config import Config

from .conftest import Client, open_put
from .daemon import Daemon
from .test_ovf import build_tar, push, served


@pytest.fixture
def cfg(cfg: Config) -> Config:
    cfg.transfer.inactivity_timeout = 1
    return cfg


async def test_silent_client_is_a_client_error(client: Client, sd: str) -> None:
    """A body that stopped coming answered 500 internal-error at the idle timeout."""
    good, _ = build_tar(sd)
    assert (await push(client, sd, good))[0] == 200
    tar2, _ = build_tar(sd, count=20)
    reader, writer = await open_put(client, f"/domains/{sd}/ovf-store", len(tar2), tar2[:3000])
    status = (await asyncio.wait_for(reader.readline(), 10)).split()[1]
    writer.close()
    assert status == b"400"
    assert await served(client, sd) == (1, good)


async def test_malformed_chunk_is_a_client_error(client: Client, sd: str) -> None:
    good, _ = build_tar(sd)
    assert (await push(client, sd, good))[0] == 200
    tar2, _ = build_tar(sd, count=20)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"PUT /domains/{sd}/ovf-store HTTP/1.1\r\nHost: x\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n".encode()
                 + f"{3000:x}\r\n".encode() + tar2[:3000] + b"\r\nzz-not-hex\r\n")
    await writer.drain()
    status = (await asyncio.wait_for(reader.readline(), 10)).split()[1]
    writer.close()
    assert status == b"400"
    assert await served(client, sd) == (1, good)


def test_client_gone_while_waiting_touches_no_store(tmp_path: Path) -> None:
    """A PUT whose client sent its body and left while the domain's previous
    update ran still began its own: it marked a good store updating, then
    failed.  On a real daemon (the test server ends such a handler)."""
    d = Daemon(tmp_path / "data")
    try:
        sd = Path(d.domain).name
        good, _ = build_tar(sd)
        tar2, _ = build_tar(sd, count=20)
        conn = http.client.HTTPConnection("127.0.0.1", d.port)
        conn.request("PUT", f"/domains/{sd}/ovf-store", body=good,
                     headers={"Authorization": f"Bearer {d.token}"})
        assert conn.getresponse().status == 200
        conn.close()

        def put_from(tar: bytes, sent: int) -> socket.socket:
            s = socket.create_connection(("127.0.0.1", d.port))
            s.sendall(f"PUT /domains/{sd}/ovf-store HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: Bearer {d.token}\r\n"
                      f"Content-Length: {len(tar)}\r\n\r\n".encode() + tar[:sent])
            return s

        first = put_from(tar2, 2000)  # holds the domain's lock
        time.sleep(0.3)
        ghost = put_from(good, len(good))
        time.sleep(0.5)
        ghost.close()  # gone while it waits
        time.sleep(0.3)
        first.sendall(tar2[2000:])
        assert first.recv(100).startswith(b"HTTP/1.1 200")
        first.close()
        time.sleep(0.5)
        status, body = d.request("GET", f"/domains/{sd}/ovf-store/info")
        assert status == 200, body
        stores = json.loads(body)["stores"]
        assert [(s["valid"], s["record"]["generation"]) for s in stores] == [(True, 2)] * 2, \
            stores
    finally:
        d.stop()


async def test_waiting_for_a_stuck_update_ends(client: Client, sd: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A second PUT waited for the domain's lock as long as the first
    client trickled its body; so did info, which now says "updating"
    (the engine asks again), and stops saying it once the update ends."""
    monkeypatch.setattr(ovf, "LOCK_WAIT", 0.5)
    monkeypatch.setattr(ovf, "INFO_WAIT", 0.5)
    good, _ = build_tar(sd)
    assert (await push(client, sd, good))[0] == 200
    tar2, _ = build_tar(sd, count=20)
    _, first = await open_put(client, f"/domains/{sd}/ovf-store", len(tar2), tar2[:2000])
    await asyncio.sleep(0.1)
    start = time.monotonic()
    code, body = await push(client, sd, good)
    assert code == 409 and "try again later" in body["detail"], body
    assert time.monotonic() - start < 5
    resp = await client.get(f"/domains/{sd}/ovf-store/info")
    assert resp.status == 200 and (await resp.json())["updating"] is True
    first.close()
    for _ in range(100):
        resp = await client.get(f"/domains/{sd}/ovf-store/info")
        if (await resp.json())["updating"] is False:
            break
    else:
        raise AssertionError("info says updating after the update ended")
    assert await served(client, sd) == (1, good)


async def test_trickling_client_meets_the_deadline(
        client: Client, sd: str, cfg: Config) -> None:
    """Each byte reset the idle timeout, so a client sending one every 0.3 s
    held the domain's update for as long as it liked."""
    cfg.ovf.update_timeout = 1
    good, _ = build_tar(sd)
    assert (await push(client, sd, good))[0] == 200
    tar2, _ = build_tar(sd, count=20)

    async def trickle() -> Any:
        yield tar2[:1000]
        for i in range(1000, len(tar2)):
            await asyncio.sleep(0.3)
            yield tar2[i:i + 1]

    start = time.monotonic()
    code, body = await push(client, sd, trickle())
    assert code == 408, body
    assert time.monotonic() - start < 5
    assert await served(client, sd) == (1, good)
