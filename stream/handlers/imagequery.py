"""What the image API tells about an image without moving it:
``GET /images/{ticket}/extents`` and ``.../checksum`` (imageio's §1.7-1.8;
beyond imageio, real holes and zero ranges of files, and ``xxh3_128``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from volume.base import Volume
from volume.errors import InvalidRequest, Unsupported

from .. import checksum as checksum_mod
from ..errors import ClientGone
from ..state import CONFIG, IO_KEY
from ..wire import blkhash
from .common import ticket_volume
from .images import authorize

routes = web.RouteTableDef()


# No HEAD on either: it would run the whole query (imageio: 405).  imageio
# matches its routes as prefixes, so each answers with a trailing slash too.
@routes.get("/images/{ticket_id}/extents", allow_head=False)
@routes.get("/images/{ticket_id}/extents/", allow_head=False)
async def extents(request: web.Request) -> web.Response:
    ticket = authorize(request, "read")
    context = request.query.get("context", "zero")
    if context == "dirty":
        raise Unsupported(
            "Ticket does not support dirty extents" if not ticket.dirty
            else "Dirty extents are not supported for file and block volumes"
        )
    if context != "zero":
        raise InvalidRequest(f"Unsupported value {context!r} for 'context'")
    io = request.app[IO_KEY]
    async with ticket.operation():
        volume = await ticket_volume(io, ticket)
        result = await io.run(_extents, volume, ticket.size)
    return web.json_response(result)


def _extents(volume: Volume, limit: int) -> list[dict[str, Any]]:
    out = []
    for e in volume.extents():
        if e.start >= limit:
            break
        length = min(e.end, limit) - e.start
        out.append({"start": e.start, "length": length, "zero": e.zero, "hole": e.hole})
    return out


@routes.get("/images/{ticket_id}/checksum/algorithms")
@routes.get("/images/{ticket_id}/checksum/algorithms/")
async def checksum_algorithms(request: web.Request) -> web.Response:
    return web.json_response({"algorithms": blkhash.algorithms()})


@routes.get("/images/{ticket_id}/checksum", allow_head=False)
@routes.get("/images/{ticket_id}/checksum/", allow_head=False)
async def checksum(request: web.Request) -> web.Response:
    ticket = authorize(request, "read")
    algorithm = request.query.get("algorithm", blkhash.DEFAULT_ALGORITHM)
    blkhash.hash_factory(algorithm)  # validates
    try:
        block_size = int(request.query.get("block_size", blkhash.DEFAULT_BLOCK_SIZE))
    except ValueError:
        raise InvalidRequest("Integer required for 'block_size'") from None
    blkhash.validate_block_size(block_size)
    io = request.app[IO_KEY]

    def check() -> None:
        ticket.check()
        if request.transport is None:
            # aiohttp does not cancel a handler whose client went away.
            raise ClientGone("the client closed the connection")

    async with ticket.operation():
        volume = await ticket_volume(io, ticket)
        size = min(ticket.size, await io.run(volume.size))
        result = await checksum_mod.checksum(
            io, volume, size, algorithm, block_size, check,
            step=request.app[CONFIG].transfer.checksum_step,
        )
    return web.json_response(result)
