"""vdsm's image forms (reference §1.6), so that an engine that was not
changed can keep its OVF stores here: ``PUT /`` pushes a store, ``GET /``
reads one back when a domain is imported or attached.

Both name the image by headers (``Storage-Pool-Id``, ``Storage-Domain-Id``,
``Image-Id``, an optional ``Volume-Id``), close the connection and carry a
``Task-Id``, as vdsm's do.  Unlike vdsm, ``GET /`` never serves a store
that is being written or does not verify: whichever store it names, it
reads the newest verified one.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from contextlib import closing

from aiohttp import web

from volume.errors import Conflict, InvalidRequest
from volume.ovfstore import OvfStores
from volume.sd import StorageDomain
from volume.validate import check_uuid

from .. import download, ovfread
from ..auth import ENGINE
from ..middleware import RESPONSE
from ..pool import Access
from ..state import CONFIG, IO_KEY, POOL
from .ovf import receive_store, storage_for, stored

routes = web.RouteTableDef()

#: The only range vdsm takes (anything else is 400 there too).
_RANGE = re.compile(r"bytes=0-(\d{1,15})")
#: Past its archive a store holds zeros; they are sent from this.
_ZEROS = memoryview(bytes(1 << 20))


class LengthRequired(InvalidRequest):
    http_status = 411
    code = "length-required"


def _image(request: web.Request) -> tuple[str, str]:
    """(domain, image) a vdsm request names; its headers are checked as
    vdsm checks them (400), and its pool must be the one in force (409)."""
    for header in ("Storage-Pool-Id", "Storage-Domain-Id", "Image-Id"):
        if header not in request.headers:
            raise InvalidRequest(f"missing header {header}")
        check_uuid(request.headers[header], header)
    if "Volume-Id" in request.headers:
        check_uuid(request.headers["Volume-Id"], "Volume-Id")
    # As vdsm, which refuses a pool it is not connected to: an engine of
    # another data center must not reach this one's stores.  The embedded
    # default (no engine map yet, version 0) belongs to no pool.
    pool = request.app[POOL].current
    sent = check_uuid(request.headers["Storage-Pool-Id"], "Storage-Pool-Id")
    if pool.map_version > 0 and sent != pool.pool_id:
        raise Conflict(f"this host is in storage pool {pool.pool_id}, not {sent}")
    return (check_uuid(request.headers["Storage-Domain-Id"], "Storage-Domain-Id"),
            check_uuid(request.headers["Image-Id"], "Image-Id"))


def _check_store(storage: StorageDomain, image: str) -> None:
    """The image a ``PUT /`` names must be one of the domain's OVF stores,
    as for ``GET /`` (the update itself picks which store it writes)."""
    with closing(OvfStores.open(storage)) as stores:
        ovfread.check_image(storage, stores, image)


@routes.put("/", name=ENGINE + "vdsm-upload")
async def vdsm_upload(request: web.Request) -> web.Response:
    """The body takes the path of ``PUT /domains/{sd}/ovf-store``."""
    sd, image = _image(request)
    if request.content_length is None:
        raise LengthRequired("Content-Length header is required")
    storage = await storage_for(request, sd, Access.READ)
    await request.app[IO_KEY].run(_check_store, storage, image)
    committed = await receive_store(request, sd)
    resp = web.json_response(committed.to_json())
    resp.headers["Task-Id"] = str(uuidlib.uuid4())
    resp.force_close()
    return resp


@routes.get("/", name=ENGINE + "vdsm-download")
async def vdsm_download(request: web.Request) -> web.StreamResponse:
    """``Range: bytes=0-N`` of an OVF_STORE image: 206 with exactly N + 1
    bytes, ``Content-Range: bytes 0-N`` (vdsm's, without the total); the
    newest verified archive, then zeros."""
    sd, image = _image(request)
    found = _RANGE.fullmatch(request.headers.get("Range", "").strip())
    if found is None:
        raise InvalidRequest("Range must be bytes=0-N, the only form vdsm takes")
    length = int(found.group(1)) + 1
    storage = await stored(request, sd)
    io = request.app[IO_KEY]
    state, volume = await io.run(ovfread.newest, storage, image, length)
    try:
        assert state.record is not None
        archive = min(length, state.record.tar_length)
        resp = web.StreamResponse(status=206)
        resp.content_type = "application/octet-stream"
        resp.content_length = length
        resp.headers["Content-Range"] = f"bytes 0-{length - 1}"
        resp.headers["Task-Id"] = str(uuidlib.uuid4())
        resp.force_close()
        request[RESPONSE] = resp
        await resp.prepare(request)
        if request.method != "HEAD":
            idle = request.app[CONFIG].transfer.inactivity_timeout
            with download.ResponseSink(request, resp, idle) as sink:
                await download.send(sink, io, volume, 0, archive, lambda: None)
                for at in range(archive, length, len(_ZEROS)):
                    await sink.write(_ZEROS[:length - at])
        await resp.write_eof()
        return resp
    finally:
        await io.run(volume.close)
