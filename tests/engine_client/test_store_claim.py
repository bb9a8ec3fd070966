"""A push whose answer got lost (the host wrote the store) leaves the
store's generation NULL; the next pass must not take this engine's own
store for a foreign one."""

from __future__ import annotations

from typing import Any
from unittest import mock

from engine_client import updater as updater_mod
from engine_client.cache import Cache
from engine_client.errors import HostError
from engine_client.push import push_store
from engine_client.updater import Updater

from .clusters import Cluster, add, stored
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
