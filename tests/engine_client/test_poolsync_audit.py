"""Audit of the pool-map sync: hosts that answer garbage must not stop it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from engine_client.cache import Cache
from engine_client.config import Config
from engine_client.poolsync import PoolSync
from tests.stream.daemon import Daemon

from .test_poolsync import host_pool, join


@pytest.fixture
async def sync(cache: Cache, cfg: Config) -> AsyncIterator[PoolSync]:
    s = PoolSync(cache, cfg)
    yield s
    await s.close()


class BadHost:
    """A host answering ``GET /stats`` with ``stats`` and ``PUT /pool`` with
    ``put`` (status, body); counts the stats requests."""

    def __init__(self, stats: Any, put: tuple[int, Any] = (200, {"changed": True})) -> None:
        self.stats, self.put = stats, put
        self.asked = 0
        self.asked_twice = asyncio.Event()

    def app(self) -> web.Application:
        async def stats(request: web.Request) -> web.Response:
            self.asked += 1
            if self.asked == 2:
                self.asked_twice.set()
            return web.json_response(self.stats)

        async def put(request: web.Request) -> web.Response:
            return web.json_response(self.put[1], status=self.put[0])

        app = web.Application()
        app.router.add_get("/stats", stats)
        app.router.add_put("/pool", put)
        return app


async def add_bad_host(cache: Cache, aiohttp_server: Any, host: BadHost, sd: str) -> None:
    server = await aiohttp_server(host.app())
    cache.add_host("bad", f"http://127.0.0.1:{server.port}", "t", [sd])


GARBAGE = [
    pytest.param({"domains": []}, id="domains-list"),
    pytest.param({"pool_id": "p", "map_version": 1, "domains": None}, id="domains-null"),
    pytest.param({"pool_id": "p", "map_version": "3", "domains": {}}, id="version-string"),
    pytest.param({"pool_id": "p", "map_version": 1, "domains": {"x": "Active"}},
                 id="domain-string"),
    pytest.param({}, id="empty"),
]


@pytest.mark.parametrize("stats", GARBAGE)
async def test_garbage_stats_fail_that_host_only(
    cache: Cache, sync: PoolSync, daemons: Callable[[], Daemon], aiohttp_server: Any,
    stats: Any
) -> None:
    daemon = daemons()
    sd = join(cache, daemon)
    await add_bad_host(cache, aiohttp_server, BadHost(stats), sd)
    for reports in (await sync.sync_once(), await sync.status()):
        by_host = {r.host: r for r in reports}
        bad = by_host["bad"]
        assert bad.state == "unreachable", bad
        assert (bad.detail or "").startswith("GET /stats answered a malformed report"), bad
        assert by_host["h1"].state in ("pushed", "in-sync")
    assert host_pool(daemon) == cache.host_map("h1")


async def test_the_loop_outlives_a_garbage_host(
    cache: Cache, cfg: Config, sync: PoolSync, daemons: Callable[[], Daemon],
    aiohttp_server: Any
) -> None:
    daemon = daemons()
    sd = join(cache, daemon)
    bad = BadHost({"domains": []})
    await add_bad_host(cache, aiohttp_server, bad, sd)
    cfg.pool.sync_interval = 0
    loop = asyncio.create_task(sync.run_forever())
    try:
        done, _ = await asyncio.wait([loop, asyncio.create_task(bad.asked_twice.wait())],
                                     timeout=20, return_when=asyncio.FIRST_COMPLETED)
        assert loop not in done, f"the sync loop died: {loop.exception()!r}"
        assert bad.asked_twice.is_set()
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert host_pool(daemon) == cache.host_map("h1")


async def test_stale_map_beyond_any_version_is_a_failed_push(
    cache: Cache, sync: PoolSync, daemons: Callable[[], Daemon], aiohttp_server: Any
) -> None:
    """A host claiming a version the engine cannot hold (it is past a signed
    64-bit integer) is reported; the engine's version does not move."""
    daemon = daemons()
    sd = join(cache, daemon)
    stale = (409, {"error": "stale-map", "detail": "newer", "map_version": 2**70})
    await add_bad_host(cache, aiohttp_server, BadHost(
        {"pool_id": "other", "map_version": 2**70, "domains": {}}, put=stale), sd)
    before = cache.pool().map_version
    by_host = {r.host: r for r in await sync.sync_once()}
    assert by_host["bad"].state == "failed", by_host["bad"]
    assert "answered 409 stale-map" in (by_host["bad"].detail or "")
    assert by_host["h1"].state == "pushed"
    assert cache.pool().map_version == before
