"""The pool-map sync against real daemons."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from engine_client.cache import Cache
from engine_client.config import Config
from engine_client.model import DomainStatus
from engine_client.poolsync import PoolSync, resend_reason, storage_errors
from tests.stream.daemon import Daemon, free_port

SD = "11111111-1111-1111-1111-111111111111"


def expected(version: int = 3, status: str = "Active") -> dict[str, object]:
    return {"pool_id": "p", "map_version": version, "master_domain": SD,
            "domains": {SD: {"type": "file", "location": "/d", "status": status}}}


def test_resend_reason() -> None:
    stats = {"pool_id": "p", "map_version": 3, "domains": {SD: {"status": "Active"}}}
    assert resend_reason(expected(), stats) is None
    assert resend_reason(expected(4), stats) == "the host has map version 3, the engine 4"
    assert resend_reason(expected(), {**stats, "pool_id": "q"}) == \
        "the host is in pool 'q', not p"
    assert resend_reason(expected(status="Maintenance"), stats) == \
        "the host's domains differ from the engine's map"


def test_storage_errors_only_count_on_active_domains() -> None:
    stats = {"domains": {SD: {"status": "Active", "reachable": False, "error": "ESTALE"}}}
    assert storage_errors(expected(), stats) == {SD: "ESTALE"}
    assert storage_errors(expected(status="Maintenance"), stats) == {}
    assert storage_errors(expected(), {"domains": {SD: {"reachable": True, "error": None}}}) \
        == {}


@pytest.fixture
async def sync(cache: Cache, cfg: Config) -> AsyncIterator[PoolSync]:
    s = PoolSync(cache, cfg)
    yield s
    await s.close()


def join(cache: Cache, daemon: Daemon, name: str = "h1") -> str:
    """Register the daemon's own domain and the daemon as a host serving it."""
    sd = os.path.basename(daemon.domain.rstrip("/"))
    cache.add_domain(sd, "file", [daemon.domain.rstrip("/")])
    cache.add_host(name, f"http://127.0.0.1:{daemon.port}", daemon.token, [sd])
    return sd


def host_pool(daemon: Daemon) -> dict[str, object]:
    status, body = daemon.request("GET", "/pool")
    assert status == 200
    result: dict[str, object] = json.loads(body)
    return result


async def test_push_then_in_sync_then_changes(cache: Cache, sync: PoolSync,
                                              daemons: Callable[[], Daemon]) -> None:
    daemon = daemons()
    sd = join(cache, daemon)
    (r,) = await sync.sync_once()
    assert (r.state, r.reported_version) == ("pushed", cache.pool().map_version)
    assert "the host is in pool" in (r.detail or "")
    assert host_pool(daemon) == cache.host_map("h1")
    (r,) = await sync.sync_once()
    assert (r.state, r.detail) == ("in-sync", None)
    assert r.domains[sd]["reachable"] is True
    cache.set_domain_status(sd, DomainStatus.MAINTENANCE)
    (r,) = await sync.status()
    assert r.state == "out-of-sync", "status only looks"
    (r,) = await sync.sync_once()
    assert r.state == "pushed"
    assert host_pool(daemon)["domains"][sd]["status"] == "Maintenance"  # type: ignore[index]


async def test_newer_map_on_the_host(cache: Cache, sync: PoolSync,
                                     daemons: Callable[[], Daemon]) -> None:
    daemon = daemons()
    join(cache, daemon)
    await sync.sync_once()
    stale = {**cache.host_map("h1"), "map_version": 50}
    assert daemon.request("PUT", "/pool", stale)[0] == 200
    (r,) = await sync.sync_once()
    assert (r.state, r.expected_version, r.reported_version) == ("pushed", 51, 51)
    assert cache.pool().map_version == 51


async def test_down_host_and_bad_token(cache: Cache, sync: PoolSync,
                                       daemons: Callable[[], Daemon]) -> None:
    daemon = daemons()
    sd = join(cache, daemon)
    cache.add_host("h1", f"http://127.0.0.1:{daemon.port}", "not-the-token", [sd])
    port = free_port()
    cache.add_host("h2", f"http://127.0.0.1:{port}", "t", [sd])
    by_host = {r.host: r for r in await sync.sync_once()}
    assert by_host["h1"].state == "refused"  # it answered: it is not unreachable
    assert by_host["h1"].detail == "GET /stats answered 401 unauthorized: this route needs " \
                                   "the engine's credential"
    assert by_host["h2"].state == "unreachable"
    assert by_host["h2"].detail is not None and by_host["h2"].detail.startswith(
        f"GET /stats: cannot connect to http://127.0.0.1:{port}:")
    by_host = {r.host: r for r in await sync.sync_once(force=True)}
    assert by_host["h1"].state == "failed" and "answered 401" in (by_host["h1"].detail or "")
    assert by_host["h2"].state == "failed"
    assert cache.host_sync("h1").pushed_version is None
    assert host_pool(daemon)["map_version"] == 0, "nothing reached the host"


@pytest.mark.slow
async def test_storage_error_resends_with_a_new_version(
    cache: Cache, cfg: Config, sync: PoolSync, daemons: Callable[[], Daemon], tmp_path: Path
) -> None:
    daemon = daemons()
    sd = join(cache, daemon)
    await sync.sync_once()
    pushed = cache.pool().map_version
    moved = tmp_path / "moved-away"
    os.rename(daemon.domain, moved)
    try:
        deadline = time.monotonic() + 25  # the host's monitor checks every 10 s
        while True:
            (r,) = await sync.status()
            if r.state == "out-of-sync":
                break
            assert time.monotonic() < deadline, "the host never reported the storage error"
            await asyncio.sleep(0.5)
        assert "No such file or directory" in (r.detail or "")
        (r,) = await sync.sync_once()
        assert cache.pool().map_version == pushed + 1
        # The host takes the map (its monitor keeps reporting the domain)...
        assert r.state == "pushed" and "storage error on domain" in (r.detail or "")
        assert host_pool(daemon)["map_version"] == pushed + 1
        # ... and it is not sent again before error_resend_interval.
        (r,) = await sync.sync_once()
        assert r.state == "out-of-sync" and "storage errors" in (r.detail or "")
        assert cache.pool().map_version == pushed + 1
    finally:
        os.rename(moved, daemon.domain)
    cfg.pool.error_resend_interval = 0  # sent again: applying it, the host checks again
    (r,) = await sync.sync_once()
    assert r.state == "pushed" and host_pool(daemon)["map_version"] == pushed + 2
    deadline = time.monotonic() + 10
    while (r := (await sync.status())[0]).state != "in-sync":
        assert time.monotonic() < deadline, f"still {r.state}: {r.detail}"
        await asyncio.sleep(0.1)
    assert sd in cache.host_map("h1")["domains"]
