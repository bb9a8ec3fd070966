"""Audit of the engine side's cache, import and updater: each test is a bug
found by trying things, kept so it stays fixed."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from engine_client.cache import Cache
from engine_client.config import Config
from engine_client.entities import ImportItem
from engine_client.errors import HostError, InvalidInput
from engine_client.hostapi import Clients
from engine_client.importer import import_dir
from engine_client.model import Host, VmStatus
from engine_client.ovf import OvfError, parse
from engine_client.ovfedit import set_shareable, set_storage_ids
from engine_client.schema import transaction
from engine_client.updater import Updater

from .ovfs import DiskSpec, vm_ovf, write

AddDomain = Callable[..., str]
MAX = 1 << 20

PROXY_PAGE = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\n"
              "<body>\n<center><h1>502 Bad Gateway</h1></center>\n</body>\n</html>\n")


@pytest.fixture
async def proxy_url(aiohttp_server: Any) -> str:
    """A reverse proxy in front of a dead host (an injected failure): an
    HTML error page, and a JSON error whose detail spans lines."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(status=502, text=PROXY_PAGE, content_type="text/html")

    async def multiline(request: web.Request) -> web.Response:
        return web.json_response({"error": "io-error", "detail": "read failed\nat block 7"},
                                 status=500)

    app = web.Application()
    app.router.add_get("/info/", page)
    app.router.add_get("/domains/{sd}/ovf-store/info", page)
    app.router.add_get("/stats", multiline)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}"


async def test_host_error_bodies_become_one_line(cache: Cache, cfg: Config,
                                                 add_domain: AddDomain, proxy_url: str) -> None:
    clients = Clients(cfg.http)
    try:
        client = clients(Host("h1", proxy_url, "t", ()))
        with pytest.raises(HostError) as e:
            await client.info()
        assert str(e.value) == ("host h1: GET /info/ answered 502 <html> <head><title>502 Bad "
                                "Gateway</title></head> <body> <center><h1>502 Bad Gateway"
                                "</h1></center> </body> </html>")
        with pytest.raises(HostError) as e:
            await client.stats()
        assert str(e.value) == "host h1: GET /stats answered 500 io-error: read failed at block 7"
    finally:
        await clients.close()
    # What the operator then sees: the store's last error, in one line.
    sd = add_domain()
    cache.add_host("h1", proxy_url, "t", [sd])
    updater = Updater(cache, cfg, rand=lambda: 0.0)
    try:
        (d,) = (await updater.run_once()).domains
    finally:
        await updater.close()
    assert d.outcome == "failed" and "502 <html>" in (d.detail or "")
    last_error = cache.store(sd).last_error or ""
    assert "502 Bad Gateway" in last_error and "\n" not in last_error and "\r" not in last_error


def test_a_full_cache_reports_full_not_a_failed_rollback(cache: Cache) -> None:
    """SQLite rolls a transaction back itself on SQLITE_FULL: a second
    ROLLBACK failed and its "no transaction is active" hid the real error."""
    pages = cache._conn.execute("PRAGMA page_count").fetchone()[0]
    cache._conn.execute(f"PRAGMA max_page_count = {pages + 3}")  # a full disk, for real
    vm = str(uuid.uuid4())
    data = vm_ovf(vm, "big", padding=200_000)
    with pytest.raises(sqlite3.OperationalError, match=r"^database or disk is full$"):
        cache.import_entities([ImportItem("big.ovf", parse(data), data)])
    assert cache.entities() == []
    cache._conn.execute("PRAGMA max_page_count = 1073741823")
    cache.import_entities([ImportItem("big.ovf", parse(data), data)])
    assert [e.uuid for e in cache.entities()] == [vm]


def test_a_failed_commit_is_rolled_back(cache: Cache, add_domain: AddDomain) -> None:
    """A COMMIT that fails leaves the transaction open: every later one of
    this connection (the updater's, for as long as it runs) then failed."""
    sd = add_domain()
    conn = cache._conn
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"), transaction(conn) as c:
        c.execute("PRAGMA defer_foreign_keys = ON")  # checked by the COMMIT
        c.execute("INSERT INTO host_domains VALUES ('no-such-host', ?)", (sd,))
    assert not conn.in_transaction
    cache.add_host("h1", "http://127.0.0.1:1", "t", [sd])
    assert [h.domains for h in cache.hosts()] == [(sd,)]


@pytest.mark.parametrize("url", [
    "http://", "http://:54322", "http://h:99999", "http://h:0", "http://h:port",
    "http://h:54322/info/", "http://h:54322/api", "http://h?x=1", "http://h#top",
    "http://user:pw@h", "http://h x", "http://h\n", "http://[::1",
])
def test_host_url_is_a_data_url(cache: Cache, url: str) -> None:
    with pytest.raises(InvalidInput, match=r"the URL must be http\(s\)://ADDRESS\[:PORT\]"):
        cache.add_host("h1", url, "t")
    assert cache.hosts() == []


def test_host_url_forms_that_work(cache: Cache, tmp_path: Path) -> None:
    for url in ("http://127.0.0.1:54322/", "https://host.example", "http://[::1]:54322"):
        cache.add_host("h1", url, "t")
        assert cache.host("h1").url == url.rstrip("/")
    r = subprocess.run([sys.executable, "-m", "engine_client", "--state-dir",
                        str(tmp_path / "cli"), "host", "add", "h2", "http://h:54322/info/",
                        "--token", "t"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("sluice-engine: host h2: the URL must be")


STORAGE_ID = "<rasd:StorageId>{}</rasd:StorageId>"


@pytest.mark.parametrize("element, rewritten", [
    ('<rasd:StorageId xsi:nil="false"/>', '<rasd:StorageId xsi:nil="false">{}</rasd:StorageId>'),
    ("<rasd:StorageId note='a > b'>{}</rasd:StorageId>",
     "<rasd:StorageId note='a > b'>{}</rasd:StorageId>"),
    ("<rasd:StorageId\n   note='x'  />", "<rasd:StorageId\n   note='x'>{}</rasd:StorageId>"),
])
def test_storage_id_with_attributes_is_rewritten(element: str, rewritten: str) -> None:
    """Self-closing with attributes gave ``</rasd:StorageId note='x'>``, and a
    ``>`` in a value ended the tag early: both refused as not well-formed."""
    sd, new_sd, vm = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    disk = DiskSpec(sd)
    data = vm_ovf(vm, "a", [disk]).replace(STORAGE_ID.format(sd).encode(),
                                           element.format(sd).encode())
    moved = set_storage_ids(data, {disk.disk: new_sd})
    assert moved == data.replace(element.format(sd).encode(), rewritten.format(new_sd).encode())
    assert parse(moved).disks[0].sd_uuid == new_sd


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_bom_is_refused_as_utf16(cache: Cache, add_domain: AddDomain,
                                                tmp_path: Path, encoding: str) -> None:
    """Without a BOM, the edit ran on UTF-16 bytes and the check said the
    (good) file was not well-formed XML."""
    sd, vm = add_domain(), str(uuid.uuid4())
    disk = DiskSpec(sd)
    data = vm_ovf(vm, "a", [disk]).decode().replace('encoding="UTF-8"', 'encoding="UTF-16"')
    raw = data.encode(encoding)
    assert raw[:2] != b"\xff\xfe" and parse(raw).disks[0].sd_uuid == sd
    with pytest.raises(OvfError, match="only UTF-8 OVFs can have their disks moved"):
        set_storage_ids(raw, {disk.disk: str(uuid.uuid4())})
    with pytest.raises(OvfError, match="only UTF-8 OVFs can have their disks changed"):
        set_shareable(raw, disk.disk, True)
    path = write(tmp_path / "ovfs", vm, raw)
    with pytest.raises(OvfError, match=f"^{re.escape(str(path))}: only UTF-8 OVFs can have "
                                       "their disks moved"):
        import_dir(cache, str(tmp_path / "ovfs"), MAX, add_domain())
    assert cache.entities() == []
    (done,) = import_dir(cache, str(tmp_path / "ovfs"), MAX)  # as it is: fine
    assert (done.uuid, cache.ovf(vm)) == (vm, raw)


def test_an_ovf_with_two_virtual_systems_is_refused(cache: Cache, add_domain: AddDomain,
                                                    tmp_path: Path) -> None:
    """The second VM was dropped without a word."""
    sd, vm, other = add_domain(), str(uuid.uuid4()), str(uuid.uuid4())
    data = vm_ovf(vm, "a", [DiskSpec(sd)]).replace(b"</ovf:Envelope>", (
        '<Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type"><Name>b</Name>'
        f'<Section ovf:id="{other}" xsi:type="ovf:OperatingSystemSection_Type"/></Content>'
        "</ovf:Envelope>").encode())
    path = write(tmp_path / "ovfs", vm, data)
    with pytest.raises(OvfError, match=f"^{re.escape(str(path))} has 2 <Content> .* "
                                       "one VM or template$"):
        import_dir(cache, str(tmp_path / "ovfs"), MAX)
    assert cache.entities() == []


def test_a_fifo_named_ovf_does_not_hang_the_import(cache: Cache, add_domain: AddDomain,
                                                   tmp_path: Path) -> None:
    sd, vm = add_domain(), str(uuid.uuid4())
    d = tmp_path / "ovfs"
    write(d, vm, vm_ovf(vm, "a", [DiskSpec(sd)]))
    fifo = d / "zz-pipe.ovf"
    os.mkfifo(fifo)
    errors: list[Exception] = []

    def run() -> None:
        try:
            import_dir(cache, str(d), MAX)
        except InvalidInput as e:
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    hung = t.is_alive()
    if hung:  # let the open return: a writer comes and goes
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join()
    assert not hung, "the import waited for a writer of the FIFO"
    assert [str(e) for e in errors] == [f"{fifo} is not a regular file"]
    assert cache.entities() == []


def test_unlock_leaves_a_vm_that_is_not_image_locked(cache: Cache,
                                                     add_domain: AddDomain) -> None:
    """``vm unlock`` of a running VM set it Down: metadata.json lost it."""
    sd, vm = add_domain(), str(uuid.uuid4())
    data = vm_ovf(vm, "a", [DiskSpec(sd)])
    cache.import_entities([ImportItem("a", parse(data), data)])
    cache.set_status(vm, VmStatus.UP)
    cache.set_locked(vm, False)
    assert cache.entity(vm).status == VmStatus.UP
    cache.set_locked(vm, True)
    assert cache.entity(vm).status == VmStatus.IMAGE_LOCKED
    cache.set_locked(vm, False)
    assert cache.entity(vm).status == VmStatus.DOWN
