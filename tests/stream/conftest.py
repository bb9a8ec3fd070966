"""Fixtures for the daemon: a real app on a real socket, real files."""

from __future__ import annotations

import asyncio
import glob
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from stream.app import RUNNER_KWARGS, make_app
from stream.config import Config

MiB = 1 << 20

Client = TestClient[web.Request, web.Application]
AddTicket = Callable[..., Awaitable[str]]


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    c = Config()
    c.daemon.data_dir = str(tmp_path / "data")
    # Small buffers so a few MiB of test data cross several buffer swaps.
    c.transfer.buffer_size = 1 * MiB
    c.transfer.io_workers = 4
    c.transfer.remove_timeout = 2
    # Small OVF stores: every domain a test makes gets them.
    c.ovf.store_size = 8 * MiB
    return c


@pytest.fixture
async def client(aiohttp_client: Any, aiohttp_server: Any, cfg: Config) -> Client:
    app = make_app(cfg, trust_tcp=True)
    server = await aiohttp_server(app, **RUNNER_KWARGS)
    c: Client = await aiohttp_client(server)
    return c


@pytest.fixture
def domain_dir(client: Client, cfg: Config) -> Path:
    """The embedded default file domain's directory (created at startup)."""
    (found,) = glob.glob(os.path.join(cfg.daemon.data_dir, "domains", "*", ""))
    path = Path(found) / "images"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def sd(domain_dir: Path) -> str:
    """The embedded default file domain's UUID."""
    return domain_dir.parent.name


@pytest.fixture
def image(domain_dir: Path) -> Callable[..., Path]:
    """Create a file in the domain: ``image(size)`` or ``image(data=...)``."""

    def make(size: int = 0, data: bytes | None = None, name: str | None = None) -> Path:
        path = domain_dir / (name or f"{uuid.uuid4()}.raw")
        with open(path, "wb") as f:
            if data is not None:
                f.write(data)
            f.truncate(size if data is None else max(size, len(data)))
        return path

    return make


@pytest.fixture
def add_ticket(client: Client) -> AddTicket:
    async def add(path: Path | str, size: int | None = None, **fields: Any) -> str:
        ticket: dict[str, Any] = {
            "uuid": str(uuid.uuid4()),
            "size": size if size is not None else os.path.getsize(path),
            "url": f"file://{path}",
            "ops": ["read", "write"],
            "timeout": 300,
        }
        ticket.update(fields)
        resp = await client.put(f"/tickets/{ticket['uuid']}", json=ticket)
        assert resp.status == 200, await resp.text()
        return str(ticket["uuid"])

    return add


async def open_put(client: Client, target: str, length: int,
                   sent: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A PUT of ``target`` announcing ``length`` bytes, of which it sends
    ``sent`` and waits (the caller goes on, or closes the writer)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"PUT {target} HTTP/1.1\r\nHost: x\r\n"
                 f"Content-Length: {length}\r\n\r\n".encode() + sent)
    await writer.drain()
    return reader, writer
