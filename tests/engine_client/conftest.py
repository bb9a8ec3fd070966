"""Fixtures of the engine side: a real cache in a temp dir, real daemons."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import zstandard
from aiohttp import web

from engine_client.cache import Cache
from engine_client.config import Config
from engine_client.poolsync import PoolSync
from engine_client.updater import Updater
from tests.stream.daemon import Daemon

from .clusters import Member


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    c = Config(state_dir=str(tmp_path / "engine"))
    # Fast failures: tests use dead ports and hosts that never answer.
    c.http.connect_timeout = 2
    c.http.request_timeout = 5
    c.http.upload_timeout = 5
    c.http.read_timeout = 3
    c.updater.backoff_base = 30
    return c


@pytest.fixture
async def updater(cache: Cache, cfg: Config) -> AsyncIterator[Updater]:
    """An OVF updater on the test's cache (test_updater.py has its own, with
    jitter off)."""
    u = Updater(cache, cfg)
    yield u
    await u.close()


@pytest.fixture
def cache(cfg: Config) -> Iterator[Cache]:
    with Cache.open(cfg.state_dir) as c:
        yield c


@pytest.fixture
def add_domain(cache: Cache, tmp_path: Path) -> Callable[..., str]:
    """Add a file domain (a real directory) to the cache: ``add_domain() -> uuid``."""

    def add(sd: str | None = None, status: str = "Active", hosts: tuple[str, ...] = (),
            location: str | None = None) -> str:
        from engine_client.model import DomainStatus

        sd = sd or str(uuid.uuid4())
        path = location or str(tmp_path / "domains" / sd)
        Path(path).mkdir(parents=True, exist_ok=True)
        cache.add_domain(sd, "file", [path], DomainStatus(status), hosts)
        return sd

    return add


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("host") / "data")
    yield d
    d.stop()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[[], Daemon]]:
    """Start real ``sluice serve`` daemons: ``daemons() -> Daemon``; stopped at teardown."""
    started: list[Daemon] = []

    def start() -> Daemon:
        home = tmp_path / f"host{len(started)}"
        home.mkdir()
        d = Daemon(home / "data")
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


class SilentHost:
    """A host that takes connections and bytes but never answers; what it
    was sent is in ``received``."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.received = bytearray()

    def requests(self) -> list[str]:
        """The request lines it was sent ("GET /stats", ...)."""
        return [" ".join(line.split()[:2]) for line in bytes(self.received).decode(
            "latin-1").split("\r\n") if line.endswith(" HTTP/1.1")]


@pytest.fixture
async def silent_host() -> AsyncIterator[SilentHost]:
    host: SilentHost | None = None

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                assert host is not None
                host.received += data
        finally:
            writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    host = SilentHost(server.sockets[0].getsockname()[1])
    yield host
    server.close()


async def no_store(request: web.Request) -> web.Response:
    """``GET .../ovf-store/info`` of a fake host: the domain holds no store
    yet, so the updater may push its first one."""
    return web.json_response({"sd_uuid": request.match_info["sd"], "stores": [],
                              "copy_errors": []})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def fake_host(aiohttp_server: Any, put: Handler,
                    features: Sequence[str] = ("ovf-store",)) -> str:
    """The URL of a fake host (an injected failure or timing: real hosts are
    in the end-to-end tests): ``features`` on ``GET /info/``, no store yet,
    and ``put`` taking ``PUT /domains/{sd}/ovf-store``."""

    async def info(request: web.Request) -> web.Response:
        return web.json_response({"server": "sluice", "features": list(features)})

    app = web.Application()
    app.router.add_get("/info/", info)
    app.router.add_get("/domains/{sd}/ovf-store/info", no_store)
    app.router.add_put("/domains/{sd}/ovf-store", put)
    server = await aiohttp_server(app, auto_decompress=False)
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
async def wrong_digest_url(aiohttp_server: Any) -> str:
    """A host that takes a whole OVF store upload and answers a wrong digest."""

    async def put(request: web.Request) -> web.Response:
        if request.headers.get("X-Ovf-Manifest") != "required":  # our tars carry one
            return web.json_response({"error": "bad-request", "detail": "no X-Ovf-Manifest"},
                                     status=400)
        body = await request.read()
        if request.headers.get("Content-Encoding") == "zstd":
            body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        return web.json_response({"generation": 3, "tar_length": len(body),
                                  "digest": "f" * 32})

    return await fake_host(aiohttp_server, put, ("ovf-store", "zstd"))


@pytest.fixture
def cluster(cache: Cache, cfg: Config, daemons: Callable[[], Daemon]
            ) -> Callable[[int], asyncio.Future[list[Member]]]:
    """``await cluster(n)``: n daemons, each serving its own domain, maps pushed."""

    async def make(n: int) -> list[Member]:
        members = []
        for i in range(n):
            d = await asyncio.to_thread(daemons)
            sd = Path(d.domain).name
            cache.add_domain(sd, "file", [d.domain.rstrip("/")])
            cache.add_host(f"h{i}", f"http://127.0.0.1:{d.port}", d.token, [sd])
            members.append(Member(d, sd, f"h{i}"))
        sync = PoolSync(cache, cfg)
        try:
            assert {r.state for r in await sync.sync_once()} == {"pushed"}
        finally:
            await sync.close()
        return members

    return lambda n: asyncio.ensure_future(make(n))
