"""``domain import``: a second engine recovers the VMs and templates of
domains from the stores the first one pushed to real daemons, and what it
cannot use is skipped with the reason."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import xxhash
from aiohttp import web

from engine_client import cli, domainimport
from engine_client.cache import Cache
from engine_client.config import Config
from engine_client.domainimport import import_domain
from engine_client.entities import ImportItem
from engine_client.errors import EngineError
from engine_client.model import VmStatus
from engine_client.ovf import parse
from engine_client.poolsync import PoolSync
from engine_client.updater import Updater
from stream.wire.tarread import OvfTarReader
from tests.stream.daemon import Daemon, free_port

from .clusters import Cluster, Member, add, cached, stored
from .ovfs import DiskSpec, vm_ovf


@pytest.fixture
def cfg2(tmp_path: Path) -> Config:
    return Config(state_dir=str(tmp_path / "engine2"))


@pytest.fixture
def cache2(cfg2: Config) -> Iterator[Cache]:
    """The cache of a second engine, which knows the domains and hosts only."""
    with Cache.open(cfg2.state_dir) as c:
        yield c


def knows(cache: Cache, *members: Member) -> None:
    for m in members:
        cache.add_domain(m.sd, "file", [m.daemon.domain.rstrip("/")])
        cache.add_host(m.host, m.url, m.daemon.token, [m.sd])


async def test_a_second_engine_recovers_the_vms(cache: Cache, updater: Updater,
                                                cluster: Cluster, cache2: Cache,
                                                cfg2: Config) -> None:
    a, b = await cluster(2)
    vm1 = add(cache, "vm1", [DiskSpec(a.sd), DiskSpec(b.sd)])
    tpl = add(cache, "tpl", [DiskSpec(a.sd)], template=True)
    vm2 = add(cache, "vm2", [DiskSpec(b.sd)])
    diskless = add(cache, "diskless", [])
    cache.set_status(vm1, VmStatus.UP)
    assert (await updater.run_once()).ok
    knows(cache2, a, b)

    r = await import_domain(cache2, cfg2, a.sd)
    assert (r.host, r.generation) == (a.host, (await stored(a)).generation)
    assert {f.uuid: f.outcome for f in r.entities} == {vm1: "added", tpl: "added",
                                                       diskless: "added"}
    assert {f.uuid: f.stored_status for f in r.entities}[vm1] == VmStatus.UP
    for vm in (vm1, tpl, diskless):
        assert cache2.ovf(vm) == cached(cache, vm)  # the bytes the first engine pushed
        assert cache2.entity(vm).status == VmStatus.DOWN  # nothing runs it here yet
        assert {(d.disk_uuid, d.sd_uuid) for d in cache2.disks(vm)} == {
            (d.disk_uuid, d.sd_uuid) for d in cache.disks(vm)}
    assert cache2.entity(tpl).kind == "template"

    r = await import_domain(cache2, cfg2, b.sd)  # vm1 and diskless are there too
    assert {f.uuid: f.outcome for f in r.entities} == {vm1: "known", vm2: "added",
                                                       diskless: "known"}
    r = await import_domain(cache2, cfg2, a.sd)  # again: nothing changes
    assert {f.outcome for f in r.entities} == {"known"}

    # The second engine's next pass writes the same entities back.
    before = {m.sd: set((await stored(m)).ovfs) for m in (a, b)}
    updater2 = Updater(cache2, cfg2)
    try:
        assert (await updater2.run_once()).ok
    finally:
        await updater2.close()
    after = {m.sd: (await stored(m)) for m in (a, b)}
    assert {sd: set(s.ovfs) for sd, s in after.items()} == before
    assert all(s.generation > 1 for s in after.values())


def _tar(members: dict[str, bytes]) -> bytes:
    """A store as an unchanged oVirt engine sends it: no manifest."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info_json = json.dumps({"Last Updated": "x", "Storage Domains": []}).encode()
        for name, data in {"info.json": info_json, **members}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


async def _push(m: Member, tar: bytes) -> None:
    async with aiohttp.ClientSession() as s, s.put(
            f"{m.url}/domains/{m.sd}/ovf-store", data=tar,
            headers={"Authorization": f"Bearer {m.daemon.token}"}) as r:
        assert r.status == 200, await r.text()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def fake_hosts(aiohttp_server: Any, cache: Cache, where: Path, store: Handler,
                     tokens: Sequence[str], sd: str | None = None) -> str:
    """A domain served by one tiny server answering GET .../ovf-store with
    ``store`` (injected failures), as hosts named by ``tokens`` (each its
    token); the domain's UUID."""
    app = web.Application()
    app.router.add_get("/domains/{sd}/ovf-store", store)
    server = await aiohttp_server(app)
    sd = sd or str(uuid.uuid4())
    where.mkdir()
    cache.add_domain(sd, "file", [str(where)])
    for name in tokens:
        cache.add_host(name, f"http://127.0.0.1:{server.port}", name, [sd])
    return sd


async def test_what_cannot_be_used_is_skipped(cluster: Cluster, cache2: Cache,
                                              cfg2: Config) -> None:
    (m,) = await cluster(1)
    knows(cache2, m)
    good, known, external, renamed, broken, elsewhere, wide = (str(uuid.uuid4())
                                                               for _ in range(7))
    known_ovf = vm_ovf(known, "mine", [DiskSpec(m.sd)])
    cache2.import_entities([ImportItem("mine", parse(known_ovf), known_ovf)])
    unknown_sd = str(uuid.uuid4())
    await _push(m, _tar({
        f"{good}.ovf": vm_ovf(good, "good", [DiskSpec(None)]),
        f"{known}.ovf": vm_ovf(known, "older copy", [DiskSpec(m.sd)]),
        f"{external}.ovf": vm_ovf(external, "ext", [DiskSpec(m.sd)], origin=4),
        f"{renamed}.ovf": vm_ovf(str(uuid.uuid4()), "renamed", []),
        f"{broken}.ovf": b"not xml at all",
        f"{elsewhere}.ovf": vm_ovf(elsewhere, "elsewhere", [DiskSpec(unknown_sd)]),
        # Parsed, but the cache cannot place its disk: only UTF-8 OVFs are edited.
        f"{wide}.ovf": vm_ovf(wide, "wide", [DiskSpec(None)]).decode().replace(
            'encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16"),
    }))
    r = await import_domain(cache2, cfg2, m.sd)
    outcome = {f.uuid: (f.outcome, f.reason) for f in r.entities}
    assert outcome[good] == ("added", None)
    assert outcome[known] == ("known", None)
    assert cache2.entity(known).name == "mine"  # the cache is newer than any store
    assert "external VM" in (outcome[external][1] or "")
    assert f"named for {renamed}" in (outcome[renamed][1] or "")
    assert outcome[broken][0] == "skipped" and "XML" in (outcome[broken][1] or "")
    assert f"domains this engine does not know: {unknown_sd}" in (outcome[elsewhere][1] or "")
    assert "only UTF-8 OVFs" in (outcome[wide][1] or "")  # and the rest of its batch went in
    assert {f.outcome for f in r.entities if f.uuid not in (good, known)} == {"skipped"}
    # A disk without a StorageId is placed on the imported domain.
    assert [d.sd_uuid for d in cache2.disks(good)] == [m.sd]


async def test_a_failing_host_gives_way(cluster: Cluster, cache2: Cache, cfg2: Config,
                                        cache: Cache, updater: Updater) -> None:
    (m,) = await cluster(1)
    vm = add(cache, "vm", [DiskSpec(m.sd)])
    assert (await updater.run_once()).ok
    knows(cache2, m)
    cache2.add_host("a-down", f"http://127.0.0.1:{free_port()}", "t", [m.sd])
    cache2.add_host("a-wrong-token", m.url, "wrong", [m.sd])
    r = await import_domain(cache2, cfg2, m.sd)
    assert r.host == m.host and [f.uuid for f in r.entities] == [vm]
    assert len(r.failed_hosts) == 2
    assert any("a-down: GET" in f and "cannot connect" in f for f in r.failed_hosts)
    assert any("a-wrong-token: GET" in f and "401" in f for f in r.failed_hosts)
    with pytest.raises(EngineError, match="no host gave a valid OVF store") as e:
        await import_domain(cache2, cfg2, m.sd, only_host="a-down")
    assert "cannot connect" in str(e.value)
    assert cache2.entity(vm).uuid == vm


async def test_cli(cluster: Cluster, cache2: Cache, cfg2: Config, cache: Cache,
                   updater: Updater, capsys: pytest.CaptureFixture[str]) -> None:
    (m,) = await cluster(1)
    state = ["--state-dir", cfg2.state_dir]

    def main(*args: str) -> int:  # the CLI runs its own event loop
        return cli.main([*state, "domain", "import", *args])

    assert await asyncio.to_thread(main, m.sd) == 2  # a domain this engine does not know
    err = capsys.readouterr().err
    assert err.startswith("sluice-engine: ") and err.count("\n") == 1
    knows(cache2, m)
    assert await asyncio.to_thread(main, m.sd, "--host", "nobody") == 2
    assert f"no host nobody serves domain {m.sd}" in capsys.readouterr().err
    assert await asyncio.to_thread(main, m.sd) == 1  # nothing pushed yet
    err = capsys.readouterr().err
    assert err.startswith("sluice-engine: no host gave a valid OVF store") and "404" in err

    vm = add(cache, "vm", [DiskSpec(m.sd)])
    assert (await updater.run_once()).ok
    assert await asyncio.to_thread(main, m.sd, "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["added"], out["known"], out["skipped"]) == (1, 0, 0)
    assert out["entities"][0]["uuid"] == vm and out["host"] == m.host
    assert await asyncio.to_thread(main, m.sd) == 0
    assert capsys.readouterr().out.startswith(
        f"domain {m.sd}: store generation 1 (")


async def test_bad_stores_are_refused(cache2: Cache, cfg2: Config, tmp_path: Path,
                                      aiohttp_server: Any) -> None:
    """Hosts (injected: a tiny server) that send a store whose bytes do not
    match their record, a store that is not one, or stop half-way."""
    padded = _tar({f"{uuid.uuid4()}.ovf": vm_ovf(str(uuid.uuid4()), "vm", [])})
    reader = OvfTarReader(max_total=len(padded))
    reader.feed(padded)
    good = padded[:reader.finish().tar_length]  # what a daemon serves: no record padding
    digest = xxhash.xxh3_128_hexdigest(good)
    answers = {
        "wrong-digest": (good, "f" * 32, len(good)),
        "not-a-store": (b"x" * 10240, xxhash.xxh3_128_hexdigest(b"x" * 10240), 10240),
        "cut-off": (good[:4096], digest, len(good)),
    }

    async def store(request: web.Request) -> web.StreamResponse:
        body, sent_digest, length = answers[request.headers["Authorization"].split()[-1]]
        resp = web.StreamResponse(headers={"X-Ovf-Generation": "3",
                                           "X-Ovf-Digest": f"xxh3_128:{sent_digest}"})
        resp.content_length = length
        await resp.prepare(request)
        await resp.write(body)
        if len(body) < length:  # drop the connection: the client sees it cut off
            assert request.transport is not None
            request.transport.close()
        return resp

    sd = await fake_hosts(aiohttp_server, cache2, tmp_path / "sd", store, list(answers))
    with pytest.raises(EngineError) as e:
        await import_domain(cache2, cfg2, sd)
    message = str(e.value)
    assert (f"wrong-digest: sent {len(good)} bytes with xxh3_128 {digest} for domain {sd}, "
            f"its record says {len(good)} bytes with {'f' * 32}") in message
    assert "not-a-store: the store of domain" in message and "not a valid OVF store" in message
    assert "cut-off:" in message
    assert cache2.entities() == []
    # No spooled store is left behind: only the cache's own files.
    assert all(p.name.startswith("engine.db") for p in Path(cfg2.state_dir).iterdir())


# -- found by review: each failed on the first version of domain import


def _declared(ovf: bytes, encoding: str) -> bytes:
    return ovf.replace(b'encoding="UTF-8"', f'encoding="{encoding}"'.encode())


async def test_an_ovf_in_an_encoding_expat_cannot_use_is_skipped(
        cluster: Cluster, cache2: Cache, cfg2: Config) -> None:
    """oVirt skips an OVF it cannot parse (ovirt-storage.md 1.8); here a
    multi-byte or unknown declared encoding raises ValueError/LookupError
    out of parse(), which nothing catches: the import stops."""
    (m,) = await cluster(1)
    knows(cache2, m)
    good, sjis, unknown = (str(uuid.uuid4()) for _ in range(3))
    await _push(m, _tar({
        f"{good}.ovf": vm_ovf(good, "good", [DiskSpec(m.sd)]),
        f"{sjis}.ovf": _declared(vm_ovf(sjis, "sjis", [DiskSpec(m.sd)]), "Shift_JIS"),
        f"{unknown}.ovf": _declared(vm_ovf(unknown, "x", [DiskSpec(m.sd)]), "x-unknown"),
    }))
    r = await import_domain(cache2, cfg2, m.sd)
    outcome = {f.uuid: f.outcome for f in r.entities}
    assert outcome == {good: "added", sjis: "skipped", unknown: "skipped"}


async def test_cli_reports_an_unusable_encoding_without_a_traceback(
        cluster: Cluster, cache2: Cache, cfg2: Config,
        capsys: pytest.CaptureFixture[str]) -> None:
    (m,) = await cluster(1)
    knows(cache2, m)
    vm = str(uuid.uuid4())
    await _push(m, _tar({f"{vm}.ovf": _declared(vm_ovf(vm, "vm", []), "Big5")}))
    code = await asyncio.to_thread(
        cli.main, ["--state-dir", cfg2.state_dir, "domain", "import", m.sd])
    assert code in (0, 1, 2)


async def test_duplicate_snapshot_ids_skip_one_ovf_not_the_import(
        cluster: Cluster, cache2: Cache, cfg2: Config) -> None:
    """6ae0f87: one OVF the cache refuses no longer stops its batch; but the
    cache's refusal may be a sqlite3.IntegrityError (not InvalidInput)."""
    (m,) = await cluster(1)
    knows(cache2, m)
    good, twice = str(uuid.uuid4()), str(uuid.uuid4())
    snap = str(uuid.uuid4())
    await _push(m, _tar({
        f"{good}.ovf": vm_ovf(good, "good", [DiskSpec(m.sd)]),
        f"{twice}.ovf": vm_ovf(twice, "twice", [DiskSpec(m.sd)],
                               snapshots=[(snap, "ACTIVE"), (snap, "ACTIVE")]),
    }))
    r = await import_domain(cache2, cfg2, m.sd)
    assert {f.uuid: f.outcome for f in r.entities} == {good: "added", twice: "skipped"}


async def test_a_store_over_max_store_is_refused_before_it_is_read(
        cache2: Cache, cfg2: Config, tmp_path: Path, aiohttp_server: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """MAX_STORE's comment: 'A store larger than this is refused before it
    is read'.  It is checked only after the whole body came (the reader
    stops at MAX_STORE bytes, spooled into the state directory first).  Here
    the host announces a store over the limit and sends nothing: the import
    should refuse it at once, not wait for the body."""
    monkeypatch.setattr(domainimport, "MAX_STORE", 1 << 20)
    cfg2.http.read_timeout = 3

    async def store(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"X-Ovf-Generation": "3",
                                           "X-Ovf-Digest": "xxh3_128:" + "0" * 32})
        resp.content_length = 2 << 20
        await resp.prepare(request)
        await asyncio.sleep(30)
        return resp

    sd = await fake_hosts(aiohttp_server, cache2, tmp_path / "sd", store, ["big"])
    start = time.monotonic()
    with pytest.raises(Exception) as e:
        await import_domain(cache2, cfg2, sd)
    assert time.monotonic() - start < 2, str(e.value)
    assert "no answer" not in str(e.value)


async def test_the_newest_copy_of_an_entity_wins_across_stores(
        cache: Cache, cfg: Config, cluster: Cluster, cache2: Cache, cfg2: Config) -> None:
    """A VM with disks on A and B; its last change reached B's store only
    (A was not writable then).  Importing A, then B, keeps A's older OVF
    ('known': 'the cache is newer than any store', which is not so for an
    entity the cache took from another store a moment ago), and the next
    pass writes that older OVF over the newer one in B's store."""
    from engine_client.entities import ImportItem
    from engine_client.model import DomainStatus
    from engine_client.ovf import parse

    a, b = await cluster(2)
    vm = str(uuid.uuid4())
    da, db = DiskSpec(a.sd), DiskSpec(b.sd)
    v1 = vm_ovf(vm, "vm", [da, db], generation=1)
    cache.import_entities([ImportItem("v1", parse(v1), v1)])
    u1 = Updater(cache, cfg)
    try:
        assert (await u1.run_once()).ok
        cache.set_domain_status(a.sd, DomainStatus("Maintenance"))
        v2 = vm_ovf(vm, "vm-renamed", [da, db], generation=2)
        cache.import_entities([ImportItem("v2", parse(v2), v2)])
        await u1.run_once()
    finally:
        await u1.close()
    assert b"vm-renamed" in (await stored(b)).ovfs[vm]
    assert b"vm-renamed" not in (await stored(a)).ovfs[vm]

    knows(cache2, a, b)
    await import_domain(cache2, cfg2, a.sd)
    await import_domain(cache2, cfg2, b.sd)
    assert cache2.entity(vm).name == "vm-renamed"


async def test_a_full_state_dir_is_one_line_not_a_traceback(
        cache: Cache, cfg: Config, cluster: Cluster, cache2: Cache, cfg2: Config,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The store is spooled into the state directory; a full disk there
    (ENOSPC, injected) escapes cli.main as an OSError traceback."""
    import errno
    import tempfile as real_tempfile

    (m,) = await cluster(1)
    add(cache, "vm", [DiskSpec(m.sd)])
    u1 = Updater(cache, cfg)
    try:
        assert (await u1.run_once()).ok
    finally:
        await u1.close()
    knows(cache2, m)

    make = real_tempfile.TemporaryFile

    class Full:
        def __init__(self, **kw: Any) -> None:
            self._f = make(**kw)

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *a: object) -> None:
            self._f.close()

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def fileno(self) -> int:
            return int(self._f.fileno())

    monkeypatch.setattr(tempfile, "TemporaryFile", Full)
    try:
        code = await asyncio.to_thread(
            cli.main, ["--state-dir", cfg2.state_dir, "domain", "import", m.sd])
    except OSError as e:
        pytest.fail(f"cli.main raised {e!r}")
    assert code == 1


def _tiny_ovf(vm: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><ovf:Envelope '
            'xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
            '<Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type"><Name>tiny</Name>'
            f'<Section ovf:id="{vm}" xsi:type="ovf:OperatingSystemSection_Type">'
            '<Info>os</Info></Section></Content></ovf:Envelope>').encode()


async def test_a_small_store_is_read_back_whole(
        cluster: Cluster, cache2: Cache, cfg2: Config) -> None:
    """The spool is a buffered TemporaryFile, read with os.pread on its fd
    without a flush: whatever is still in the 4 KiB write buffer is not
    there.  A store under 4 KiB is read back empty."""
    (m,) = await cluster(1)
    knows(cache2, m)
    vm = str(uuid.uuid4())
    await _push(m, _tar({f"{vm}.ovf": _tiny_ovf(vm)}))
    r = await import_domain(cache2, cfg2, m.sd)
    assert {f.uuid: (f.outcome, f.reason) for f in r.entities} == {vm: ("added", None)}


async def test_a_short_last_chunk_is_read_back(
        cache2: Cache, cfg2: Config, tmp_path: Path, aiohttp_server: Any) -> None:
    """The same with ordinary OVFs: a host whose last few KiB arrive as a
    chunk of their own (any network may cut it there).  The end of the last
    OVF stays in the spool's buffer, and that OVF is skipped as bad XML."""
    import xxhash

    from stream.wire.tarread import OvfTarReader

    sd = str(uuid.uuid4())
    vm = str(uuid.uuid4())
    padded = _tar({f"{vm}.ovf": vm_ovf(vm, "vm", [DiskSpec(sd)])})
    reader = OvfTarReader(max_total=len(padded))
    reader.feed(padded)
    body = padded[:reader.finish().tar_length]
    digest = xxhash.xxh3_128_hexdigest(body)

    async def store(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"X-Ovf-Generation": "3",
                                           "X-Ovf-Digest": f"xxh3_128:{digest}"})
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[:-3000])
        await asyncio.sleep(0.2)
        await resp.write(body[-3000:])
        return resp

    await fake_hosts(aiohttp_server, cache2, tmp_path / "sd", store, ["h"], sd)
    r = await import_domain(cache2, cfg2, sd)
    assert {f.uuid: (f.outcome, f.reason) for f in r.entities} == {vm: ("added", None)}


async def test_a_pass_before_the_import_keeps_the_store(cache: Cache, updater: Updater,
                                                        cluster: Cluster, cache2: Cache,
                                                        cfg2: Config) -> None:
    """A second engine that knows a domain but has not imported its store
    must not replace it with its own (empty) view of the domain: its pass
    refuses, naming the command to run; once imported, it pushes."""
    (m,) = await cluster(1)
    vm = add(cache, "vm", [DiskSpec(m.sd)])
    assert (await updater.run_once()).ok
    before = await stored(m)
    knows(cache2, m)
    mine = add(cache2, "mine", [DiskSpec(m.sd)])
    updater2 = Updater(cache2, cfg2)
    try:
        r = await updater2.run_once()
        (d,) = r.domains
        assert d.outcome == "failed"
        assert (f"domain {m.sd} holds an OVF store this engine never wrote nor imported "
                f"(generation {before.generation}, 1 OVF, host {m.host}); run "
                f"'sluice-engine domain import {m.sd}' first") in (d.detail or "")
        assert await stored(m) == before  # untouched
        await import_domain(cache2, cfg2, m.sd)
        r = await updater2.run_once(retry_now=True)
        assert [d.outcome for d in r.domains] == ["updated"]
    finally:
        await updater2.close()
    assert set((await stored(m)).ovfs) == {vm, mine}


async def test_skipped_ovfs_stay_in_the_store_until_imported(cluster: Cluster,
                                                              cache2: Cache,
                                                              cfg2: Config) -> None:
    """An OVF the import could not take (a disk on a domain this engine does
    not know yet; one it cannot parse) stays in the domain's store across
    passes, as oVirt keeps its unregistered entities; an external VM does
    not.  Once the other domain is known, an import takes it."""
    a, b = await cluster(2)
    knows(cache2, a)
    both, broken, external = (str(uuid.uuid4()) for _ in range(3))
    both_ovf = vm_ovf(both, "both", [DiskSpec(a.sd), DiskSpec(b.sd)])
    broken_ovf = b"<not xml"
    await _push(a, _tar({f"{both}.ovf": both_ovf, f"{broken}.ovf": broken_ovf,
                         f"{external}.ovf": vm_ovf(external, "ext", [], origin=4)}))
    r = await import_domain(cache2, cfg2, a.sd)
    assert {f.outcome for f in r.entities} == {"skipped"}
    updater2 = Updater(cache2, cfg2)
    try:
        assert (await updater2.run_once()).ok
        kept = await stored(a)
        assert kept.ovfs == {both: both_ovf, broken: broken_ovf}  # not the external one
        assert cache2.gc_blobs() == 0  # held OVFs are not garbage

        knows(cache2, b)  # the other domain of its disks: now it can come in
        r = await import_domain(cache2, cfg2, a.sd)
        assert {f.uuid: f.outcome for f in r.entities}[both] == "added"
        assert (await updater2.run_once()).ok
    finally:
        await updater2.close()
    assert set((await stored(a)).ovfs) == {both, broken}
    assert cache2.ovf(both) == both_ovf


async def test_a_domain_not_in_the_hosts_map_says_to_push_it(
        daemons: Callable[[], Daemon], cache2: Cache, cfg2: Config, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A domain made on the host, then ``domain add``, ``host add`` and
    ``domain import`` before any map with it reached the host: the host
    answers 404 not-in-pool, and the one line the CLI prints says what to
    run; the 404 of a mapped domain with no store gives no such hint."""
    d = await asyncio.to_thread(daemons)
    sd = str(uuid.uuid4())
    (tmp_path / "sd2").mkdir()
    status, body = d.request("POST", "/domains", {"uuid": sd, "type": "file",
                                                  "location": str(tmp_path / "sd2")})
    assert status == 201, body
    cache2.add_domain(sd, "file", [str(tmp_path / "sd2")])
    cache2.add_host("h0", f"http://127.0.0.1:{d.port}", d.token, [sd])
    argv = ["--state-dir", cfg2.state_dir, "domain", "import", sd]
    assert await asyncio.to_thread(cli.main, argv) == 1
    err = capsys.readouterr().err
    assert "404 not-in-pool" in err and err.count("\n") == 1
    assert err.rstrip().endswith("push it with 'sluice-engine pool push' and import again")

    sync = PoolSync(cache2, cfg2)
    try:
        assert {r.state for r in await sync.sync_once()} == {"pushed"}
    finally:
        await sync.close()
    with pytest.raises(EngineError) as e:
        await import_domain(cache2, cfg2, sd)
    assert "has no valid OVF store" in str(e.value) and "pool push" not in str(e.value)
