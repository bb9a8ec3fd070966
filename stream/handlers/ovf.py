"""Engine-facing OVF store routes (vdsm's forms for old engines are in ``vdsm``)."""

from __future__ import annotations

from aiohttp import web

from volume.sd import StorageDomain
from volume.validate import check_uuid

from .. import download, ovf, ovfread, upload
from ..auth import ENGINE
from ..mapwatch import MapWatch
from ..middleware import RESPONSE
from ..pool import Access
from ..state import CONFIG, IO_KEY, OVF_UPDATES, POOL
from .common import body_coding

routes = web.RouteTableDef()


async def storage_for(request: web.Request, sd: str, access: Access) -> StorageDomain:
    mgr = request.app[POOL]
    sd = check_uuid(sd, "storage domain")
    mgr.check(sd, access)
    return await request.app[IO_KEY].run(mgr.registry.storage, sd)


async def stored(request: web.Request, sd: str) -> StorageDomain:
    """The domain whose OVF stores a request reads, its pending archive
    (left by a crash or an error in a one-store update) restored first."""
    storage = await storage_for(request, sd, Access.READ)
    mgr = request.app[POOL]

    def writable() -> None:
        mgr.check(storage.uuid, Access.OVF_WRITE)
    await request.app[OVF_UPDATES].restore(request.app[IO_KEY], storage, writable)
    return storage


#: A Sluice engine sends ``X-Ovf-Manifest: required``: its tars always carry
#: a manifest, and one damaged byte in its key must not turn the checks off.
MANIFEST_HEADER = "X-Ovf-Manifest"


async def receive_store(request: web.Request, sd: str) -> ovf.Committed:
    mgr = request.app[POOL]
    sd = check_uuid(sd, "storage domain")
    # Checked now and watched until the update ends, its copies included:
    # a map that stops OVF writes to the domain meanwhile stops the update.
    watch = MapWatch(mgr, sd, Access.OVF_WRITE, "the OVF store update")
    try:
        storage = await request.app[IO_KEY].run(mgr.registry.storage, sd)
        zstd, _ = body_coding(request)
    except BaseException:
        watch.close()
        raise
    cfg = request.app[CONFIG]
    return await request.app[OVF_UPDATES].receive(
        upload.pieces(request.content), request.app[IO_KEY], storage, watch,
        zstd=zstd, idle_timeout=cfg.transfer.inactivity_timeout,
        length=request.content_length, buffer_size=cfg.ovf.buffer_size,
        depth=cfg.transfer.write_depth,
        require_manifest=request.headers.get(MANIFEST_HEADER, "").strip().lower() == "required",
        deadline=cfg.ovf.update_timeout,
        client_gone=lambda: request.transport is None or request.transport.is_closing(),
    )


@routes.put("/domains/{sd}/ovf-store", name=ENGINE + "put-ovf-store")
async def put_store(request: web.Request) -> web.Response:
    committed = await receive_store(request, request.match_info["sd"])
    return web.json_response(committed.to_json())


@routes.get("/domains/{sd}/ovf-store", name=ENGINE + "get-ovf-store")
async def get_store(request: web.Request) -> web.StreamResponse:
    storage = await stored(request, request.match_info["sd"])
    io = request.app[IO_KEY]
    state, volume = await io.run(ovfread.newest, storage)
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
            idle = request.app[CONFIG].transfer.inactivity_timeout
            with download.ResponseSink(request, resp, idle) as sink:
                await download.send(sink, io, volume, 0, state.record.tar_length, lambda: None)
        await resp.write_eof()
        return resp
    finally:
        await io.run(volume.close)


@routes.get("/domains/{sd}/ovf-store/info", name=ENGINE + "ovf-store-info")
async def store_info(request: web.Request) -> web.Response:
    storage = await stored(request, request.match_info["sd"])
    # After the copies of a running update, so that all stores show it;
    # "updating" if it still runs (the caller may ask again).
    updates = request.app[OVF_UPDATES]
    updating = not await updates.settled(storage.uuid)
    stores = await request.app[IO_KEY].run(ovfread.states, storage)
    return web.json_response({"sd_uuid": storage.uuid, "stores": stores,
                              "updating": updating,
                              "copy_errors": updates.copy_errors.get(storage.uuid, [])})


@routes.get("/domains/{sd}/ovf-store/{name}", name=ENGINE + "get-ovf")
async def get_ovf(request: web.Request) -> web.Response:
    storage = await stored(request, request.match_info["sd"])
    data = await request.app[IO_KEY].run(ovfread.read_member, storage, request.match_info["name"])
    return web.Response(body=data, content_type="application/xml")
