"""Engine-facing OVF store routes, and vdsm's upload form for old engines."""

from __future__ import annotations

import uuid as uuidlib

from aiohttp import web

from volume.errors import Conflict, InvalidRequest
from volume.sd import StorageDomain
from volume.validate import check_uuid

from .. import download, ovf, upload
from ..auth import ENGINE
from ..errors import UnsupportedEncoding
from ..middleware import RESPONSE
from ..pool import Access
from ..state import CONFIG, IO_KEY, OVF_UPDATES, POOL

routes = web.RouteTableDef()


class LengthRequired(InvalidRequest):
    http_status = 411
    code = "length-required"


async def _storage(request: web.Request, sd: str, access: Access) -> StorageDomain:
    mgr = request.app[POOL]
    sd = check_uuid(sd, "storage domain")
    mgr.check(sd, access)
    return await request.app[IO_KEY].run(mgr.registry.storage, sd)


#: A Sluice engine sends ``X-Ovf-Manifest: required``: its tars always carry
#: a manifest, and one damaged byte in its key must not turn the checks off.
MANIFEST_HEADER = "X-Ovf-Manifest"


async def _receive(request: web.Request, sd: str) -> ovf.Committed:
    storage = await _storage(request, sd, Access.OVF_WRITE)
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", "zstd"):
        raise UnsupportedEncoding(f"Content-Encoding {encoding!r} is not supported; use zstd")
    cfg = request.app[CONFIG]
    return await request.app[OVF_UPDATES].receive(
        upload.pieces(request.content), request.app[IO_KEY], storage, zstd=encoding == "zstd",
        idle_timeout=cfg.transfer.inactivity_timeout, buffer_size=cfg.ovf.buffer_size,
        depth=cfg.transfer.write_depth,
        require_manifest=request.headers.get(MANIFEST_HEADER, "").strip().lower() == "required",
    )


@routes.put("/domains/{sd}/ovf-store", name=ENGINE + "put-ovf-store")
async def put_store(request: web.Request) -> web.Response:
    committed = await _receive(request, request.match_info["sd"])
    return web.json_response(committed.to_json())


@routes.get("/domains/{sd}/ovf-store", name=ENGINE + "get-ovf-store")
async def get_store(request: web.Request) -> web.StreamResponse:
    storage = await _storage(request, request.match_info["sd"], Access.READ)
    io = request.app[IO_KEY]
    state, volume = await io.run(ovf.newest, storage)
    try:
        assert state.record is not None
        resp = web.StreamResponse()
        resp.content_type = "application/x-tar"
        resp.content_length = state.record.tar_length
        resp.headers["X-Ovf-Generation"] = str(state.record.generation)
        resp.headers["X-Ovf-Digest"] = f"xxh3_128:{state.record.digest}"
        request[RESPONSE] = resp
        await resp.prepare(request)
        if request.method != "HEAD":  # whose answer has no body to send
            with download.ResponseSink(request, resp) as sink:
                await download.send(sink, io, volume, 0, state.record.tar_length, lambda: None)
        await resp.write_eof()
        return resp
    finally:
        await io.run(volume.close)


@routes.get("/domains/{sd}/ovf-store/info", name=ENGINE + "ovf-store-info")
async def store_info(request: web.Request) -> web.Response:
    storage = await _storage(request, request.match_info["sd"], Access.READ)
    # After the copies of a running update, so that all stores show it.
    updates = request.app[OVF_UPDATES]
    await updates.settled(storage.uuid)
    stores = await request.app[IO_KEY].run(ovf.states, storage)
    return web.json_response({"sd_uuid": storage.uuid, "stores": stores,
                              "copy_errors": updates.copy_errors.get(storage.uuid, [])})


@routes.get("/domains/{sd}/ovf-store/{name}", name=ENGINE + "get-ovf")
async def get_ovf(request: web.Request) -> web.Response:
    storage = await _storage(request, request.match_info["sd"], Access.READ)
    data = await request.app[IO_KEY].run(ovf.read_member, storage, request.match_info["name"])
    return web.Response(body=data, content_type="application/xml")


@routes.put("/", name=ENGINE + "vdsm-upload")
async def vdsm_upload(request: web.Request) -> web.Response:
    """vdsm's ``PUT /`` upload (reference §1.6): an unchanged engine pushes
    OVF stores this way.  The body takes the same verified path."""
    for header in ("Storage-Pool-Id", "Storage-Domain-Id", "Image-Id"):
        if header not in request.headers:
            raise InvalidRequest(f"missing header {header}")
        check_uuid(request.headers[header], header)
    if request.content_length is None:
        raise LengthRequired("Content-Length header is required")
    # As vdsm, which refuses a pool it is not connected to: an engine of
    # another data center must not write this one's stores.  The embedded
    # default (no engine map yet, version 0) belongs to no pool.
    pool = request.app[POOL].current
    sent = check_uuid(request.headers["Storage-Pool-Id"], "Storage-Pool-Id")
    if pool.map_version > 0 and sent != pool.pool_id:
        raise Conflict(f"this host is in storage pool {pool.pool_id}, not {sent}")
    committed = await _receive(request, request.headers["Storage-Domain-Id"])
    resp = web.json_response(committed.to_json())
    resp.headers["Task-Id"] = str(uuidlib.uuid4())
    resp.force_close()
    return resp
