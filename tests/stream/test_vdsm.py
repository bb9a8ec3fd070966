"""vdsm's image forms on the data port: ``PUT /`` and ``GET /``."""

from __future__ import annotations

import io
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from stream.app import make_app
from stream.config import Config

from .conftest import Client
from .test_ovf import build_tar, push, served


def vdsm_headers(sd: str, image: str | None = None, **more: str) -> dict[str, str]:
    return {"Storage-Pool-Id": str(uuid.uuid4()), "Storage-Domain-Id": sd,
            "Image-Id": image or str(uuid.uuid4()), "Volume-Id": str(uuid.uuid4()), **more}


async def store_images(client: Client, sd: str) -> list[dict[str, Any]]:
    info = await (await client.get(f"/domains/{sd}/ovf-store/info")).json()
    stores: list[dict[str, Any]] = info["stores"]
    return stores


async def engine_pool(client: Client, sd: str, domain_dir: Path) -> str:
    """An engine's map in force, of a new pool with ``sd`` Active; its UUID."""
    pool = str(uuid.uuid4())
    resp = await client.put("/pool", json={
        "pool_id": pool, "map_version": 1, "master_domain": sd,
        "domains": {sd: {"type": "file", "location": str(domain_dir.parent),
                         "status": "Active"}}})
    assert resp.status == 200, await resp.text()
    return pool


async def test_vdsm_upload_form(client: Client, sd: str, domain_dir: Path) -> None:
    tar, _ = build_tar(sd, with_manifest=False)
    # An image that is none of the domain's stores: 404, as for GET /.
    resp = await client.put("/", data=tar, headers=vdsm_headers(sd))
    assert resp.status == 404 and "is not an OVF_STORE" in (await resp.json())["detail"]
    headers = vdsm_headers(sd, (await store_images(client, sd))[1]["img_uuid"])
    resp = await client.put("/", data=tar, headers=headers)
    assert resp.status == 200, await resp.text()
    assert "Task-Id" in resp.headers
    gen, data = await served(client, sd)
    assert gen == 1 and data == tar[: len(data)]
    resp = await client.put("/", data=tar, headers={"Storage-Domain-Id": sd})
    assert resp.status == 400
    resp = await client.put("/", data=tar, headers={**headers, "Image-Id": "disk-1"})
    assert resp.status == 400 and "Image-Id" in (await resp.json())["detail"]
    # Once an engine's map is in force, only that pool's engine may write.
    pool = await engine_pool(client, sd, domain_dir)
    resp = await client.put("/", data=tar, headers=headers)
    assert resp.status == 409
    assert (await resp.json())["detail"] == (
        f"this host is in storage pool {pool}, not {headers['Storage-Pool-Id']}")
    assert (await served(client, sd))[0] == 1  # nothing written
    resp = await client.put("/", data=tar, headers={**headers, "Storage-Pool-Id": pool})
    assert resp.status == 200, await resp.text()
    assert (await served(client, sd))[0] == 2
    # And read back as that engine reads it.
    image = (await store_images(client, sd))[0]["img_uuid"]
    resp = await client.get("/", headers={**headers, "Storage-Pool-Id": pool, "Image-Id": image,
                                          "Range": f"bytes=0-{len(tar) - 1}"})
    assert resp.status == 206 and await resp.read() == tar


async def test_vdsm_download_reads_the_newest_store(client: Client, sd: str) -> None:
    first, _ = build_tar(sd, count=3)
    tar, ovfs = build_tar(sd, count=5)
    for body in (first, tar):
        assert (await push(client, sd, body))[0] == 200
    for store in await store_images(client, sd):
        zeros = (5 << 19) + 3000  # 2.5 MiB and a bit: zeros sent in several pieces
        size = len(tar) + zeros  # the engine asks for the size it recorded
        resp = await client.get("/", headers=vdsm_headers(sd, store["img_uuid"],
                                                          Range=f"bytes=0-{size - 1}"))
        assert resp.status == 206, await resp.text()
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert resp.headers["Content-Range"] == f"bytes 0-{size - 1}"  # vdsm's: no total
        assert int(resp.headers["Content-Length"]) == size and "Task-Id" in resp.headers
        assert resp.headers["Connection"].lower() == "close"
        data = await resp.read()
        assert data == tar + bytes(zeros)
        # What the engine does with it (reference §1.8): untar, take *.ovf.
        with tarfile.open(fileobj=io.BytesIO(data)) as t:
            found = {m.name: t.extractfile(m).read()  # type: ignore[union-attr]
                     for m in t.getmembers() if m.name.endswith(".ovf")}
        assert found == {f"{vm}.ovf": xml for vm, xml in ovfs.items()}
    resp = await client.get("/", headers=vdsm_headers(sd, store["img_uuid"], Range="bytes=0-99"))
    assert resp.status == 206 and await resp.read() == tar[:100]
    resp = await client.head("/", headers=vdsm_headers(sd, store["img_uuid"], Range="bytes=0-99"))
    assert (resp.status, resp.headers["Content-Length"], await resp.read()) == (206, "100", b"")


async def test_vdsm_download_never_serves_a_torn_store(client: Client, sd: str,
                                                       domain_dir: Path) -> None:
    """vdsm reads the store it is asked for, torn or not; here the newest
    verified one is read, whichever store the engine names."""
    old, _ = build_tar(sd, count=2)
    new, _ = build_tar(sd, count=4)
    for body in (old, new):
        assert (await push(client, sd, body))[0] == 200
    torn, kept = await store_images(client, sd)
    path = domain_dir / torn["img_uuid"] / torn["vol_uuid"]
    with open(path, "r+b") as f:  # one bit flips in the archive
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    headers = vdsm_headers(sd, torn["img_uuid"], Range=f"bytes=0-{len(new) - 1}")
    resp = await client.get("/", headers=headers)
    assert resp.status == 206 and await resp.read() == new
    path = domain_dir / kept["img_uuid"] / kept["vol_uuid"]
    with open(path, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    resp = await client.get("/", headers=headers)
    assert resp.status == 404 and "no valid OVF store" in (await resp.json())["detail"]


@pytest.mark.parametrize("change, status, detail", [
    ({"Range": None}, 400, "Range must be bytes=0-N"),
    ({"Range": "bytes=1-99"}, 400, "Range must be bytes=0-N"),
    ({"Range": "bytes=0-"}, 400, "Range must be bytes=0-N"),
    ({"Range": "bytes=0-9,20-29"}, 400, "Range must be bytes=0-N"),
    ({"Image-Id": None}, 400, "missing header Image-Id"),
    ({"Storage-Domain-Id": "sd-1"}, 400, "Storage-Domain-Id"),
    ({"Volume-Id": "vol-1"}, 400, "Volume-Id"),
    ({"Image-Id": "random"}, 404, "is not an OVF_STORE of storage domain"),
    ({"Range": f"bytes=0-{8 << 20}"}, 416, "bytes asked; the OVF stores of"),
    ({"Storage-Domain-Id": "random"}, 404, ""),
], ids=["no-range", "not-from-0", "open-range", "two-ranges", "no-image", "bad-domain",
        "bad-volume", "not-a-store", "past-the-stores", "unknown-domain"])
async def test_vdsm_download_bad_requests(client: Client, sd: str, change: dict[str, str | None],
                                          status: int, detail: str) -> None:
    tar, _ = build_tar(sd)
    assert (await push(client, sd, tar))[0] == 200
    image = (await store_images(client, sd))[0]["img_uuid"]
    headers: dict[str, str] = vdsm_headers(sd, image, Range="bytes=0-99")
    for key, value in change.items():
        if value is None:
            del headers[key]
        else:
            headers[key] = str(uuid.uuid4()) if value == "random" else value
    resp = await client.get("/", headers=headers)
    assert resp.status == status, await resp.text()
    assert detail in (await resp.json())["detail"]
    if status == 416:
        assert resp.headers["Content-Range"].startswith("bytes */")


async def test_vdsm_download_of_another_pool_is_refused(client: Client, sd: str,
                                                        domain_dir: Path) -> None:
    tar, _ = build_tar(sd)
    assert (await push(client, sd, tar))[0] == 200
    pool = await engine_pool(client, sd, domain_dir)
    image = (await store_images(client, sd))[0]["img_uuid"]
    resp = await client.get("/", headers=vdsm_headers(sd, image, Range="bytes=0-99"))
    assert resp.status == 409 and f"storage pool {pool}" in (await resp.json())["detail"]


async def test_vdsm_forms_need_the_engine_credential(aiohttp_client: Any, cfg: Config) -> None:
    c = await aiohttp_client(make_app(cfg))
    token = (Path(cfg.daemon.data_dir) / "engine.token").read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    sd = (await (await c.get("/pool", headers=auth)).json())["master_domain"]
    tar, _ = build_tar(sd)
    assert (await c.put("/", data=tar, headers=vdsm_headers(sd))).status == 401
    resp = await c.put(f"/domains/{sd}/ovf-store", data=tar, headers=auth)
    assert resp.status == 200, await resp.text()
    info = await (await c.get(f"/domains/{sd}/ovf-store/info", headers=auth)).json()
    headers = vdsm_headers(sd, info["stores"][0]["img_uuid"], Range="bytes=0-99")
    assert (await c.get("/", headers=headers)).status == 401
    resp = await c.get("/", headers={**headers, **auth})
    assert resp.status == 206 and await resp.read() == tar[:100]
