"""Whose store the updater may replace.  A push whose answer got lost (the
host wrote the store) leaves the store's generation NULL; the next pass must
not take this engine's own store for a foreign one.  A store no host could
list must not be replaced unseen."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import pytest
from aiohttp import web

from engine_client import updater as updater_mod
from engine_client.cache import Cache
from engine_client.config import Config
from engine_client.errors import HostError
from engine_client.push import push_store
from engine_client.updater import Updater

from .clusters import Cluster, Member, add, stored
from .ovfs import DiskSpec


async def test_own_store_after_a_lost_answer(cache: Cache, updater: Updater,
                                             cluster: Cluster) -> None:
    (m,) = await cluster(1)
    vm = add(cache, "vm", [DiskSpec(m.sd)])
    real = push_store

    async def lost(*a: Any, **kw: Any) -> Any:
        await real(*a, **kw)  # written on the host...
        raise HostError(m.host, "no answer", code="timeout")  # ...but the answer never came

    with mock.patch.object(updater_mod, "push_store", lost):
        r = await updater.run_once()
    assert [d.outcome for d in r.domains] == ["failed"]
    assert set((await stored(m)).ovfs) == {vm}  # our own store is on the host
    assert cache.store(m.sd).generation is None
    r = await updater.run_once(retry_now=True)
    (d,) = r.domains
    assert d.outcome == "updated", d.detail


@pytest.fixture
async def info_fails(aiohttp_server: Any) -> Callable[..., Awaitable[str]]:
    """``await info_fails(m)``: the URL of a proxy to ``m``'s real daemon that
    answers 503 to ``GET .../ovf-store/info`` alone (a listing that fails or
    times out behind a proxy) and forwards everything else.  With
    ``uncounted=True`` it forwards the listing, its stores' OVFs uncounted
    (as a daemon answers for a store its reader can no longer count)."""

    async def make(m: Member, uncounted: bool = False) -> str:
        async def forward(request: web.Request) -> web.Response:
            if request.method == "GET" and request.path.endswith("/ovf-store/info"):
                if uncounted:
                    async with aiohttp.ClientSession() as s, s.get(
                            m.url + request.path_qs, headers=dict(request.headers)) as r:
                        info = await r.json()
                    for store in info["stores"]:
                        store.update(entries=None, ovfs=None, entries_error="a PAX key")
                    return web.json_response(info)
                return web.json_response({"error": "unavailable",
                                          "detail": "store listing failed"}, status=503)
            drop = {"host", "content-length", "transfer-encoding"}
            headers = {k: v for k, v in request.headers.items() if k.lower() not in drop}
            body = await request.read()
            async with aiohttp.ClientSession(auto_decompress=False) as s, s.request(
                    request.method, m.url + request.path_qs, headers=headers,
                    data=body if body else None) as r:
                keep = {k: v for k, v in r.headers.items()
                        if k.lower() == "content-type" or k.lower().startswith("x-ovf")}
                return web.Response(status=r.status, body=await r.read(), headers=keep)

        app = web.Application(client_max_size=1 << 26)
        app.router.add_route("*", "/{tail:.*}", forward)
        server = await aiohttp_server(app, auto_decompress=False)
        return f"http://127.0.0.1:{server.port}"

    return make


async def test_store_unchecked_is_not_replaced(cache: Cache, updater: Updater, cfg: Config,
                                               cluster: Cluster, tmp_path: Path,
                                               info_fails: Callable[..., Awaitable[str]]
                                               ) -> None:
    """A second engine (or this one after losing its cache) whose hosts cannot
    say what the domain's store holds must not replace it unseen: the domain
    fails, with backoff, and the first engine's OVFs stay."""
    (m,) = await cluster(1)
    vms = {add(cache, f"vm{i}", [DiskSpec(m.sd)]) for i in range(5)}
    assert (await updater.run_once()).ok
    before = await stored(m)
    assert set(before.ovfs) == vms
    cfg2 = Config(state_dir=str(tmp_path / "engine2"))
    cfg2.updater.backoff_base = 30
    with Cache.open(cfg2.state_dir) as cache2:
        cache2.add_domain(m.sd, "file", [m.daemon.domain.rstrip("/")])
        cache2.add_host(m.host, await info_fails(m), m.daemon.token, [m.sd])
        add(cache2, "mine", [DiskSpec(m.sd)])
        updater2 = Updater(cache2, cfg2, rand=lambda: 0.0)
        try:
            start = time.time()
            (d,) = (await updater2.run_once()).domains
        finally:
            await updater2.close()
        assert d.outcome == "failed"
        assert d.detail == (f"could not check the domain's existing OVF store: host {m.host}: "
                            f"GET /domains/{m.sd}/ovf-store/info answered 503 unavailable: "
                            "store listing failed")
        s = cache2.store(m.sd)
        assert s.outdated and not s.claimed and s.generation is None and s.failures == 1
        assert s.next_attempt >= start + 30
    assert await stored(m) == before  # the first engine's store, untouched


async def test_store_uncounted_is_not_replaced(cache: Cache, updater: Updater, cfg: Config,
                                               cluster: Cluster, tmp_path: Path,
                                               info_fails: Callable[..., Awaitable[str]]
                                               ) -> None:
    """A valid store the host lists without a count of its OVFs (its reader
    refuses something an older daemon committed) was taken for an empty one,
    claimed and replaced: the first engine's OVFs were gone."""
    (m,) = await cluster(1)
    vms = {add(cache, f"vm{i}", [DiskSpec(m.sd)]) for i in range(3)}
    assert (await updater.run_once()).ok
    before = await stored(m)
    assert set(before.ovfs) == vms
    cfg2 = Config(state_dir=str(tmp_path / "engine2"))
    with Cache.open(cfg2.state_dir) as cache2:
        cache2.add_domain(m.sd, "file", [m.daemon.domain.rstrip("/")])
        cache2.add_host(m.host, await info_fails(m, uncounted=True), m.daemon.token, [m.sd])
        add(cache2, "mine", [DiskSpec(m.sd)])
        updater2 = Updater(cache2, cfg2, rand=lambda: 0.0)
        try:
            (d,) = (await updater2.run_once()).domains
        finally:
            await updater2.close()
        assert d.outcome == "failed"
        assert d.detail is not None and "could not count" in d.detail, d.detail
        assert "a PAX key" in d.detail
        assert not cache2.store(m.sd).claimed
    assert await stored(m) == before
