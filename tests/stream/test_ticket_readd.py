"""A ticket the pool map canceled, kept while its write is stuck, must not
take a re-added ticket of the same id with it when it finally goes, and its
own volume must be closed."""

from __future__ import annotations

import asyncio
from typing import Any

from stream.state import AUTH
from tests.conftest import LoopDeviceFactory

from .conftest import Client, MiB
from .test_copy import add_domain, new_volume, set_pool
from .test_volume_in_use import PATTERN, _ticket, away_and_back, stick_pattern_writes


async def test_readd_while_kept(client: Client, loop_device: LoopDeviceFactory,
                                monkeypatch: Any) -> None:
    dev = loop_device(16 * MiB)
    sd = await add_domain(client, [dev], "block", ovf_stores=1, ovf_store_size=MiB)
    await set_pool(client, {sd: ("block", [dev])}, version=1)
    a = await new_volume(client, sd, MiB)
    t = await _ticket(client, a, ["write"])
    app = client.app
    assert app is not None
    auth = app[AUTH]
    old = auth.get(t)
    entered, release = stick_pattern_writes(monkeypatch)
    upload = asyncio.ensure_future(client.put(f"/images/{t}", data=PATTERN))
    try:
        assert await asyncio.to_thread(entered.wait, 10)
        assert old.volume is not None
        await away_and_back(client, sd)
        # The engine adds the ticket again (vdsm retries the same id).
        body = {"uuid": t, "size": MiB, "ops": ["write"], "timeout": 60, **a}
        readd = asyncio.ensure_future(client.put(f"/tickets/{t}", json=body))
        await asyncio.sleep(0.5)
    finally:
        release.set()
        await upload
    put_status = (await readd).status
    await asyncio.sleep(1)
    present = (await client.get(f"/tickets/{t}")).status
    assert old.volume is None, (
        f"the canceled ticket's volume was never closed (re-add answered {put_status}, "
        f"ticket now {present})")
    if put_status == 200:
        assert present == 200, "a re-added ticket (200) vanished when the old one went"
