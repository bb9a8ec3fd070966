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


async def test_readd_for_another_volume_of_the_same_device(
        client: Client, loop_device: LoopDeviceFactory) -> None:
    """A ticket re-added under its id for another volume of the same block
    domain was taken as a retry of the same ticket (both volumes' path is
    the device's): it named the new volume, but kept serving the region of
    the old one it had opened.  Writes meant for one volume landed in the
    other, and the old one could be deleted under the ticket."""
    dev = loop_device(16 * MiB, sector_size=4096)
    sd = await add_domain(client, [dev], "block", ovf_stores=1, ovf_store_size=MiB)
    await set_pool(client, {sd: ("block", [dev])}, version=1)
    a, b = await new_volume(client, sd, MiB), await new_volume(client, sd, MiB)
    t = await _ticket(client, b, ["read", "write"])
    assert (await client.put(f"/images/{t}", data=b"B" * MiB)).status == 200
    body = {"uuid": t, "size": MiB, "ops": ["read", "write"], "timeout": 60, **a}
    assert (await client.put(f"/tickets/{t}", json=body)).status == 200
    assert (await (await client.get(f"/tickets/{t}")).json())["vol_id"] == a["vol_id"]
    assert (await client.put(f"/images/{t}", data=b"A" * MiB)).status == 200
    assert (await client.delete(f"/tickets/{t}")).status == 204
    for ref, byte in ((a, b"A"), (b, b"B")):
        r = await _ticket(client, ref, ["read"])
        assert await (await client.get(f"/images/{r}")).read() == byte * MiB, ref
        assert (await client.delete(f"/tickets/{r}")).status == 204
