"""The pool map on the control API: versions, statuses and the I/O they allow."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from stream.pool import ALLOWED, Access, Status
from tests.conftest import LoopDeviceFactory

from .conftest import AddTicket, Client
from .test_ovf import build_tar, push

MiB = 1 << 20
POOL = str(uuid.uuid4())


def pool_map(version: int, domains: dict[str, tuple[str, str]], **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "pool_id": POOL,
        "map_version": version,
        "master_domain": next(iter(domains), None),
        "domains": {sd: {"type": "file", "location": loc, "status": st}
                    for sd, (loc, st) in domains.items()},
    }
    body.update(extra)
    return body


@pytest.fixture
def sd(domain_dir: Path) -> tuple[str, str]:
    """(uuid, directory) of the embedded default domain."""
    root = domain_dir.parent
    return root.name, str(root)


async def put_pool(client: Client, body: Any) -> Any:
    resp = await client.put("/pool", json=body)
    return resp.status, await resp.json()


async def test_embedded_default_is_a_standalone_pool(client: Client, sd: tuple[str, str]) -> None:
    resp = await client.get("/pool")
    body = await resp.json()
    assert body["map_version"] == 0
    assert body["domains"][sd[0]] == {"type": "file", "location": sd[1], "status": "Active"}


async def test_version_must_grow(client: Client, sd: tuple[str, str]) -> None:
    m1 = pool_map(1, {sd[0]: (sd[1], "Active")})
    assert (await put_pool(client, m1))[0] == 200
    status, body = await put_pool(client, m1)  # re-send: harmless
    assert status == 200 and body["changed"] is False
    m1_other = pool_map(1, {sd[0]: (sd[1], "Maintenance")})
    status, body = await put_pool(client, m1_other)
    assert status == 409
    assert body["error"] == "stale-map" and body["map_version"] == 1
    status, body = await put_pool(client, pool_map(0, {sd[0]: (sd[1], "Active")}))
    assert status == 400  # versions start at 1
    assert (await (await client.get("/pool")).json())["map_version"] == 1


@pytest.mark.parametrize("mutate,detail", [
    pytest.param(lambda m: m["domains"].update({"not-a-uuid": m["domains"].popitem()[1]}),
                 "malformed UUID", id="malformed-uuid"),
    pytest.param(lambda m: next(iter(m["domains"].values())).update(status="Sleepy"),
                 "unknown status 'Sleepy'", id="unknown-status"),
    pytest.param(lambda m: next(iter(m["domains"].values())).update(location="/etc/hostname"),
                 "is not a directory", id="location-not-dir"),
    pytest.param(lambda m: next(iter(m["domains"].values())).update(type="block"),
                 "is not a block device", id="dir-as-block"),
    pytest.param(lambda m: m.update(pool_id="xyz"), "malformed UUID: pool_id", id="pool-id"),
    pytest.param(lambda m: m.update(master_domain=str(uuid.uuid4())), "not in the map",
                 id="master-missing"),
])
async def test_bad_maps_are_refused_and_map_unchanged(
    client: Client, sd: tuple[str, str], mutate: Any, detail: str
) -> None:
    before = await (await client.get("/pool")).json()
    body = pool_map(5, {sd[0]: (sd[1], "Active")})
    mutate(body)
    status, err = await put_pool(client, body)
    assert status == 400
    assert detail in err["detail"]
    assert await (await client.get("/pool")).json() == before


async def test_domain_left_the_map(
    client: Client, sd: tuple[str, str], image: Any, tmp_path: Path
) -> None:
    path = image(MiB)
    other_dir = tmp_path / "other-domain"
    other_dir.mkdir()
    other = str(uuid.uuid4())
    assert (await put_pool(client, pool_map(1, {other: (str(other_dir), "Active")})))[0] == 200
    t = {"uuid": "t1", "size": MiB, "ops": ["read"], "timeout": 10, "url": f"file://{path}"}
    resp = await client.put("/tickets/t1", json=t)
    assert resp.status == 403
    assert "not inside a registered storage domain" in await resp.text()


def test_domain_not_in_map_is_404() -> None:
    from stream.pool import EMPTY
    from volume.errors import NotFound

    with pytest.raises(NotFound) as e:
        EMPTY.check(str(uuid.uuid4()), Access.READ)
    assert e.value.http_status == 404


# The flows of the engine (ovirt-storage.md §2.4), each step a map version.
MAINTENANCE = ["Active", "PreparingForMaintenance", "Maintenance"]
ACTIVATION = ["Maintenance", "Activating", "Active"]
DETACH = ["Maintenance", "Detaching"]
OTHER = ["Inactive", "Unknown", "Locked"]


#: What the issue allows, written out rather than read from stream.pool:
#: image writes only on Active; OVF store writes also while the domain is
#: leaving (its stores are refreshed just before; oVirt's maintenance flow
#: locks the domain for that); reads on any status.
WRITES = {"Active"}
OVF_WRITES = {"Active", "PreparingForMaintenance", "Detaching", "Locked"}


@pytest.mark.parametrize("flow", [MAINTENANCE, ACTIVATION, DETACH, OTHER],
                         ids=["maintenance", "activation", "detach", "other"])
async def test_status_gates_tickets(
    client: Client, sd: tuple[str, str], image: Any, flow: list[str]
) -> None:
    path = image(MiB)
    tar, _ = build_tar(sd[0], count=2)
    for version, status in enumerate(flow, start=1):
        assert (await put_pool(client, pool_map(version, {sd[0]: (sd[1], status)})))[0] == 200
        for ops in (["read", "write"], ["read"]):
            t = {"uuid": str(uuid.uuid4()), "size": MiB, "ops": ops, "timeout": 10,
                 "url": f"file://{path}"}
            resp = await client.put(f"/tickets/{t['uuid']}", json=t)
            allowed = status in WRITES if "write" in ops else True
            assert (resp.status == 200) == allowed, (status, ops, resp.status)
            if not allowed:
                text = await resp.text()
                assert resp.status == 409 and sd[0] in text and status in text
        code, body = await push(client, sd[0], tar)
        assert (code == 200) == (status in OVF_WRITES), (status, code, body)
        if code != 200:
            assert code == 409 and sd[0] in body["detail"] and status in body["detail"]
        resp = await client.get(f"/domains/{sd[0]}/ovf-store/info")
        assert resp.status == 200, status  # reads on any status


def test_the_table_matches_the_issue() -> None:
    every = {s.value for s in Status}
    assert {s.value for s in ALLOWED[Access.WRITE]} == WRITES
    assert {s.value for s in ALLOWED[Access.OVF_WRITE]} == OVF_WRITES
    assert {s.value for s in ALLOWED[Access.READ]} == every


async def test_leaving_active_cancels_write_tickets(
    client: Client, sd: tuple[str, str], image: Any, add_ticket: AddTicket
) -> None:
    assert (await put_pool(client, pool_map(1, {sd[0]: (sd[1], "Active")})))[0] == 200
    path = image(MiB)
    writer = await add_ticket(path)
    reader = await add_ticket(path, ops=["read"])
    await put_pool(client, pool_map(2, {sd[0]: (sd[1], "PreparingForMaintenance")}))
    resp = await client.put(f"/images/{writer}", data=b"x" * 10)
    assert resp.status == 403
    resp = await client.get(f"/images/{reader}")
    assert resp.status == 200  # reads go on while the domain is leaving


async def test_stats_report_health_and_version(client: Client, sd: tuple[str, str]) -> None:
    await put_pool(client, pool_map(3, {sd[0]: (sd[1], "Active")}))
    app = client.app
    assert app is not None
    from stream.state import POOL

    await app[POOL].monitor.check_all()
    stats = await (await client.get("/stats")).json()
    assert stats["map_version"] == 3
    d = stats["domains"][sd[0]]
    assert d["reachable"] is True and d["total"] > 0 and 0 <= d["free"] <= d["total"]
    assert d["latency"] >= 0 and d["last_check"] > 0


async def test_a_location_holding_no_such_domain_is_reported(
    client: Client, sd: tuple[str, str], tmp_path: Path, loop_device: LoopDeviceFactory
) -> None:
    """Storage that answers but does not hold the domain (an empty export,
    the wrong directory, a blank LUN) is reachable, and still an error in
    ``/stats``: the engine then sees it in ``pool status`` before an OVF
    push or a transfer fails on it."""
    empty, wrong, blank = (str(uuid.uuid4()) for _ in range(3))
    (tmp_path / "empty").mkdir()
    body = pool_map(6, {sd[0]: (sd[1], "Active"), empty: (str(tmp_path / "empty"), "Active"),
                        wrong: (sd[1], "Active")})
    body["domains"][blank] = {"type": "block", "location": [loop_device(4 * MiB)],
                              "status": "Active"}
    status, answer = await put_pool(client, body)
    assert status == 200, answer
    app = client.app
    assert app is not None
    from stream.state import POOL

    await app[POOL].monitor.check_all()
    found = {k: (v["reachable"], v["error"]) for k, v in (await (await client.get(
        "/stats")).json())["domains"].items()}
    assert found[sd[0]] == (True, None)
    assert found[empty] == (True, f"{tmp_path / 'empty'} is not a storage domain "
                                  "(no domain.json)")
    assert found[wrong] == (True, f"{sd[1]} holds storage domain {sd[0]}, not {wrong}")
    assert found[blank][0] is True
    assert "is not part of a storage domain" in str(found[blank][1])


async def test_stats_report_a_block_domains_free_space(
    client: Client, loop_device: LoopDeviceFactory
) -> None:
    """A block domain's free space was always null in /stats (and its total
    counted the metadata area): the engine could not tell a full one."""
    devices = [loop_device(16 * MiB, sector_size=4096), loop_device(8 * MiB)]
    sd = str(uuid.uuid4())
    resp = await client.post("/domains", json={"uuid": sd, "type": "block",
                                               "location": devices, "ovf_stores": 1,
                                               "ovf_store_size": MiB})
    assert resp.status == 201, await resp.text()
    body = pool_map(4, {})
    body["master_domain"] = sd
    body["domains"] = {sd: {"type": "block", "location": devices, "status": "Active"}}
    assert (await put_pool(client, body))[0] == 200
    resp = await client.post(f"/domains/{sd}/volumes", json={
        "img_id": str(uuid.uuid4()), "vol_id": str(uuid.uuid4()), "size": 5 * MiB})
    assert resp.status == 201, await resp.text()
    app = client.app
    assert app is not None
    from stream.state import POOL

    await app[POOL].monitor.check_all()
    d = (await (await client.get("/stats")).json())["domains"][sd]
    assert d["reachable"] is True
    assert d["total"] == 22 * MiB  # each device less its 1 MiB metadata area
    assert d["free"] == 16 * MiB  # less the OVF store and the volume


async def test_a_hung_location_is_reported_and_stalls_nothing(
    client: Client, sd: tuple[str, str], tmp_path: Path, loop_device: LoopDeviceFactory,
    image: Any, add_ticket: AddTicket
) -> None:
    """A LUN whose storage stopped answering: the check's open() never
    returns (here a real one: the device's link now names a FIFO nobody
    writes).  The monitor gives up on it after its timeout and reports it;
    the other domain's check and image transfers go on meanwhile."""
    link = tmp_path / "lun"
    link.symlink_to(loop_device(4 * MiB))
    hung = str(uuid.uuid4())
    body = pool_map(5, {sd[0]: (sd[1], "Active")})
    body["domains"][hung] = {"type": "block", "location": [str(link)], "status": "Active"}
    status, answer = await put_pool(client, body)
    assert status == 200, answer
    app = client.app
    assert app is not None
    from stream.state import POOL

    monitor = app[POOL].monitor
    monitor.timeout = 0.5
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link.unlink()
    link.symlink_to(fifo)
    try:
        check = asyncio.ensure_future(monitor.check_all())
        path = image(MiB)
        ticket = await add_ticket(path)
        resp = await client.put(f"/images/{ticket}", data=b"x" * MiB)
        assert resp.status == 200, await resp.text()  # the open() still hangs
        await asyncio.wait_for(check, 5)  # given up on after 0.5 s
        stats = await (await client.get("/stats")).json()
        assert stats["domains"][hung]["reachable"] is False
        assert stats["domains"][hung]["error"] == "check did not finish in 0.5 s"
        assert stats["domains"][sd[0]]["reachable"] is True
    finally:  # a writer lets the blocked open() return, and its thread end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


async def test_an_unreachable_location_is_applied_and_reported(
    client: Client, sd: tuple[str, str], tmp_path: Path
) -> None:
    """A map may be what tells the host that a domain whose storage is gone
    is Inactive: it must apply.  The monitor then reports the domain
    unreachable, and I/O on it is refused with that reason."""
    gone = str(uuid.uuid4())
    status, body = await put_pool(client, pool_map(4, {
        sd[0]: (sd[1], "Active"), gone: (str(tmp_path / "unmounted"), "Active")}))
    assert status == 200, body
    app = client.app
    assert app is not None
    from stream.state import POOL

    await app[POOL].monitor.check_all()
    stats = await (await client.get("/stats")).json()
    assert stats["map_version"] == 4
    assert stats["domains"][gone]["reachable"] is False
    assert "No such file" in stats["domains"][gone]["error"]
    assert stats["domains"][sd[0]]["reachable"] is True
    resp = await client.get(f"/domains/{gone}/volumes")
    assert resp.status == 409
    assert "unreachable" in (await resp.json())["detail"]
