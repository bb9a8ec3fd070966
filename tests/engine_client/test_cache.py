from __future__ import annotations

import os
import sqlite3
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from engine_client import decide, schema
from engine_client.cache import Cache
from engine_client.entities import ImportItem
from engine_client.errors import InvalidInput, NotFound
from engine_client.model import Disk, DomainStatus, VmStatus
from engine_client.ovf import parse
from engine_client.schema import CacheError

from .ovfs import DiskSpec, vm_ovf

AddDomain = Callable[..., str]


def item(entity: str, name: str, disks: list[DiskSpec], **kw: object) -> ImportItem:
    data = vm_ovf(entity, name, disks, **kw)  # type: ignore[arg-type]
    return ImportItem(f"{name}.ovf", parse(data), data)


def test_new_cache_is_wal_at_the_current_version(cfg: object, cache: Cache) -> None:
    path = os.path.join(cache.state_dir, schema.DB_NAME)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.VERSION
    finally:
        conn.close()
    pool = cache.pool()
    assert (pool.map_version, pool.master_domain) == (0, None)
    assert str(uuid.UUID(pool.pool_id)) == pool.pool_id


def test_reopen_keeps_state_and_newer_schema_is_refused(tmp_path: Path) -> None:
    with Cache.open(str(tmp_path)) as c:
        pool_id = c.pool().pool_id
    with Cache.open(str(tmp_path)) as c:
        assert c.pool().pool_id == pool_id
    conn = sqlite3.connect(tmp_path / schema.DB_NAME)
    conn.execute(f"PRAGMA user_version = {schema.VERSION + 1}")
    conn.close()
    with pytest.raises(CacheError, match="newer than this sluice-engine knows"):
        Cache.open(str(tmp_path))


def test_a_v3_cache_migrates_and_older_writers_still_fit(tmp_path: Path) -> None:
    """A cache made at schema v3 opens at the current version, and the
    statements a v3 sluice-engine still running beside it makes (a domain
    inserted with its four columns, a status set) still work."""
    conn = schema.connect(str(tmp_path))  # the current schema, taken back to v3 below
    conn.execute("DROP TABLE domain_flows")
    conn.execute("PRAGMA user_version = 3")
    conn.close()
    with Cache.open(str(tmp_path)) as c:
        sd = str(uuid.uuid4())
        with c._tx() as t:  # what a v3 add_domain runs
            t.execute("INSERT INTO domains VALUES (?, ?, ?, ?)",
                      (sd, "file", '["/x"]', "PreparingForMaintenance"))
            t.execute("INSERT INTO ovf_stores (sd_uuid) VALUES (?)", (sd,))
        # A v3 cut-short flow: where it began is not known.
        assert c.enter_flow(sd, DomainStatus.PREPARING_FOR_MAINTENANCE,
                            (DomainStatus.ACTIVE, DomainStatus.PREPARING_FOR_MAINTENANCE),
                            "maintenance") is None
        c.set_domain_status(sd, DomainStatus.INACTIVE)
        assert c.enter_flow(sd, DomainStatus.PREPARING_FOR_MAINTENANCE,
                            (DomainStatus.INACTIVE, DomainStatus.PREPARING_FOR_MAINTENANCE),
                            "maintenance") == DomainStatus.INACTIVE
        with c._tx() as t:  # a v3 set_domain_status
            t.execute("UPDATE domains SET status = ? WHERE uuid = ?", ("Active", sd))
        assert c.domain(sd).status == DomainStatus.ACTIVE


def test_domains_hosts_and_the_map(cache: Cache, add_domain: AddDomain) -> None:
    a = add_domain()
    b = add_domain(status="Maintenance")
    assert cache.pool().master_domain == a
    cache.add_host("h1", "http://127.0.0.1:1/", "tok\n", [b])
    version = cache.pool().map_version
    m = cache.host_map("h1")
    assert m["master_domain"] is None  # h1 does not serve the master
    assert m["domains"] == {b: {"type": "file", "location": cache.domain(b).location[0],
                                "status": "Maintenance"}}
    assert cache.host("h1").url == "http://127.0.0.1:1" and cache.host("h1").token == "tok"
    cache.set_domain_status(b, DomainStatus.MAINTENANCE)  # no change: same version
    assert cache.pool().map_version == version
    cache.set_domain_status(b, DomainStatus.ACTIVE)
    assert cache.pool().map_version == version + 1
    assert cache.bump_map_version(above=40) == 41


@pytest.mark.parametrize("call, message", [
    pytest.param(lambda c: c.add_domain("nope", "file", ["/x"]), "is not a UUID",
                 id="bad-uuid"),
    pytest.param(lambda c: c.add_domain(str(uuid.uuid4()), "nfs", ["/x"]), "'file' or 'block'",
                 id="bad-type"),
    pytest.param(lambda c: c.add_domain(str(uuid.uuid4()), "file", ["rel"]), "absolute",
                 id="relative"),
    pytest.param(lambda c: c.add_host("h", "ftp://x", "t"), "http:// or https://",
                 id="bad-url"),
    pytest.param(lambda c: c.add_host("h", "http://x", " "), "token is empty", id="no-token"),
])
def test_bad_input(cache: Cache, call: Callable[[Cache], object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        call(cache)


def test_unknown_names(cache: Cache) -> None:
    with pytest.raises(NotFound, match="is not known; add it with 'sluice-engine domain add'"):
        cache.set_domain_status(str(uuid.uuid4()), DomainStatus.ACTIVE)
    with pytest.raises(NotFound, match="host 'h9' is not known"):
        cache.add_domain(str(uuid.uuid4()), "file", ["/x"], hosts=["h9"])
    with pytest.raises(NotFound, match="is not known"):
        cache.entity(str(uuid.uuid4()))


def test_import_add_change_unchanged(cache: Cache, add_domain: AddDomain) -> None:
    sd = add_domain()
    vm = str(uuid.uuid4())
    disk = DiskSpec(sd)
    (done,) = cache.import_entities([item(vm, "a", [disk], generation=5)])
    assert (done.action, done.db_generation) == ("added", 5)
    e = cache.entity(vm)
    assert (e.db_generation, e.ovf_generation, e.ovf_digest) == (5, 0, None)
    (done,) = cache.import_entities([item(vm, "a", [disk], generation=5)])
    assert (done.action, done.db_generation) == ("unchanged", 5)
    cache.set_locked(vm, True, disk=disk.disk)
    (done,) = cache.import_entities([item(vm, "renamed", [disk], generation=5)])
    assert (done.action, done.db_generation) == ("changed", 6)
    (d,) = cache.disks(vm)
    assert d.locked, "a re-import keeps the disk's lock"


def test_import_unknown_domain_imports_nothing(cache: Cache, add_domain: AddDomain) -> None:
    sd, unknown = add_domain(), str(uuid.uuid4())
    good = item(str(uuid.uuid4()), "good", [DiskSpec(sd)])
    bad = item(str(uuid.uuid4()), "bad", [DiskSpec(unknown)])
    with pytest.raises(InvalidInput, match=f"bad.ovf: disk .* of vm bad .* is on storage "
                                           f"domain {unknown}, which is not known"):
        cache.import_entities([good, bad])
    assert cache.entities() == []


def test_import_places_disks_and_rewrites_the_ovf(cache: Cache, add_domain: AddDomain) -> None:
    a, b = add_domain(), add_domain()
    vm, disk = str(uuid.uuid4()), DiskSpec(a)
    cache.import_entities([item(vm, "a", [disk])], disk_domains={disk.disk: b})
    assert [d.sd_uuid for d in cache.disks(vm)] == [b]
    source = cache.ovf(vm)
    assert source is not None and parse(source).disks[0].sd_uuid == b
    with pytest.raises(InvalidInput, match="has no storage domain"):
        cache.import_entities([item(str(uuid.uuid4()), "c", [DiskSpec(None)])])


def test_set_disk_moves_and_bumps(cache: Cache, add_domain: AddDomain) -> None:
    a, b = add_domain(), add_domain()
    vm, disk = str(uuid.uuid4()), DiskSpec(a)
    cache.import_entities([item(vm, "a", [disk])])
    cache.set_disk(vm, disk.disk)  # nothing to change
    assert cache.entity(vm).db_generation == 1
    cache.set_disk(vm, disk.disk, b)
    assert cache.entity(vm).db_generation == 2
    source = cache.ovf(vm)
    assert source is not None and parse(source).disks[0].sd_uuid == b
    cache.set_disk(vm, disk.disk, shareable=True)
    assert cache.disks(vm)[0].shareable and cache.entity(vm).db_generation == 3
    with pytest.raises(InvalidInput, match="which is not known"):
        cache.set_disk(vm, disk.disk, str(uuid.uuid4()))
    with pytest.raises(NotFound, match="has no disk"):
        cache.set_disk(vm, str(uuid.uuid4()), b)


def test_locks_and_status(cache: Cache, add_domain: AddDomain) -> None:
    sd, vm, snap = add_domain(), str(uuid.uuid4()), str(uuid.uuid4())
    cache.import_entities([item(vm, "a", [DiskSpec(sd)], snapshots=[(snap, "ACTIVE")])])
    cache.set_locked(vm, True)
    assert cache.entity(vm).status == VmStatus.IMAGE_LOCKED
    cache.set_locked(vm, False)
    assert cache.entity(vm).status == VmStatus.DOWN
    cache.set_locked(vm, True, snapshot=snap)
    assert cache.snapshots(vm)[0].status == "LOCKED"
    with pytest.raises(NotFound, match="has no snapshot"):
        cache.set_locked(vm, True, snapshot=str(uuid.uuid4()))
    cache.set_status(vm, VmStatus.UP)
    assert cache.entity(vm).status == 1


def test_delete_records_the_domains(cache: Cache, add_domain: AddDomain) -> None:
    a, b = add_domain(), add_domain()
    vm = str(uuid.uuid4())
    cache.import_entities([item(vm, "a", [DiskSpec(a), DiskSpec(b, shareable=True)])])
    assert cache.delete_entity(vm) == sorted([a, b])
    with pytest.raises(NotFound):
        cache.entity(vm)
    assert cache.disks(vm) == []
    assert cache.process_deletions() == [(vm, sorted([a, b]))]
    assert cache.process_deletions() == []


def test_concurrent_writer_in_another_connection(cache: Cache, add_domain: AddDomain) -> None:
    """WAL: a second process (the CLI) writes while the updater's cache is open."""
    sd = add_domain()
    with Cache.open(cache.state_dir) as other:
        other.set_domain_status(sd, DomainStatus.MAINTENANCE)
    assert cache.domain(sd).status == DomainStatus.MAINTENANCE


def test_push_of_a_store_marked_meanwhile_stays_outdated(cache: Cache,
                                                          add_domain: AddDomain) -> None:
    sd = add_domain()
    content = cache.store_content(sd)
    vm = str(uuid.uuid4())
    cache.import_entities([item(vm, "a", [DiskSpec(sd)])])
    cache.process_entities(cache.outdated_entities("", 10))  # marks sd during "the push"
    assert not cache.store_pushed(content, 1, "0" * 32, 2048, "h1", 1.0, 0.5)
    s = cache.store(sd)
    assert s.outdated and s.generation == 1 and s.stored == frozenset()
    assert cache.store_pushed(cache.store_content(sd), 2, "1" * 32, 4096, "h1", 2.0, 1.5)
    s = cache.store(sd)
    assert not s.outdated and s.stored == {vm} and (s.generation, s.tar_length) == (2, 4096)


def test_store_content_applies_the_rules_of_decide(cache: Cache, add_domain: AddDomain) -> None:
    """``stores.content`` selects in SQL what ``decide.store_members`` and
    ``vm_statuses`` say, over every kind of disk placement."""
    a, b = add_domain(), add_domain()
    specs = {
        "on-a": [DiskSpec(a)], "on-b": [DiskSpec(b)], "both": [DiskSpec(a), DiskSpec(b)],
        "shared-a": [DiskSpec(a, shareable=True)], "diskless": [],
        "inactive-a": [DiskSpec(a)], "shared-a-own-b": [DiskSpec(a, shareable=True), DiskSpec(b)],
    }
    uuids = {name: str(uuid.uuid4()) for name in specs}
    items = [item(uuids[n], n, disks) for n, disks in specs.items()]
    items.append(item(str(uuid.uuid4()), "external", [DiskSpec(a)], origin=4))
    items.append(item(str(uuid.uuid4()), "template", [], template=True))
    cache.import_entities(items)
    cache.process_entities(cache.outdated_entities("", 100))
    cache.import_entities([item(str(uuid.uuid4()), "never-processed", [DiskSpec(a)])])
    disk = next(d for d in cache.disks(uuids["inactive-a"]))
    cache.set_disk(uuids["inactive-a"], disk.disk_uuid, active=False)
    cache.set_status(uuids["on-a"], VmStatus.UP)
    cache.set_status(uuids["diskless"], VmStatus.PAUSED)
    ents = cache.entities()
    by_entity: dict[str, list[Disk]] = {}
    for d in cache.disks():
        by_entity.setdefault(d.entity_uuid, []).append(d)
    for sd in (a, b):
        content = cache.store_content(sd)
        members = decide.store_members(sd, ents, by_entity)
        assert list(content.members) == members and members
        assert content.vm_status == decide.vm_statuses(ents, members)
    names = {e.uuid: e.name for e in ents}
    # No active non-shareable disk (a shareable one only, an inactive one
    # only) is as no disk: in every store.
    assert sorted(names[m.uuid] for m in cache.store_content(a).members) == [
        "both", "diskless", "inactive-a", "on-a", "shared-a", "template"]
    assert sorted(names[m.uuid] for m in cache.store_content(b).members) == [
        "both", "diskless", "inactive-a", "on-b", "shared-a", "shared-a-own-b", "template"]


def test_gc_blobs_keeps_what_entities_refer_to(cache: Cache, add_domain: AddDomain) -> None:
    sd = add_domain()
    vm = str(uuid.uuid4())
    cache.import_entities([item(vm, "a", [DiskSpec(sd)])])
    cache.process_entities(cache.outdated_entities("", 10))
    first = cache.ovf(vm, cached=True)
    cache.import_entities([item(vm, "b", [DiskSpec(sd)])])  # the cached OVF stays "a"
    assert cache.gc_blobs() == 0
    cache.process_entities(cache.outdated_entities("", 10))
    assert cache.gc_blobs() == 1, "a's OVF is neither current nor cached any more"
    assert cache.ovf(vm, cached=True) != first and cache.ovf(vm) is not None
