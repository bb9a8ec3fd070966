"""The image API, wire-compatible with ovirt-imageio (its §1.2-1.8).

Beyond imageio: chunked and zstd-encoded uploads, ``X-Checksum`` on PUT,
real holes in ``extents`` and the ``xxh3_128`` checksum algorithm.
"""

from __future__ import annotations

import logging
from typing import Any

import xxhash
from aiohttp import web

from volume.base import Volume
from volume.errors import ChecksumMismatch, InvalidRequest, OutOfRange

from .. import download, upload
from ..logctx import transfer_id
from ..middleware import RESPONSE
from ..state import AUTH, CONFIG, IO_KEY
from ..tickets import Ticket
from ..wire import ranges
from ..wire.digest import parse_x_checksum
from .common import body_coding, flag_param, read_json, ticket_volume

log = logging.getLogger(__name__)

routes = web.RouteTableDef()


def authorize(request: web.Request, op: str) -> Ticket:
    ticket = request.app[AUTH].authorize(request.match_info["ticket_id"], op)
    transfer_id.set(ticket.log_id)
    ticket.attach(request.protocol)
    return ticket


def _past_ticket(start: int, end: int, ticket: Ticket) -> OutOfRange:
    """416 for bytes ``[start, end)``, named as ``Content-Range`` and
    ``Range`` name them: by their first and last byte."""
    what = f"range {start}-{end - 1}" if end > start else f"offset {start}"
    return OutOfRange(f"Requested {what} is past the ticket size ({ticket.size} bytes)",
                      ticket.size)


@routes.put("/images/{ticket_id}")
async def put(request: web.Request) -> web.Response:
    ticket = authorize(request, "write")
    flush = flag_param(request, "flush", default=True)
    close = _close_param(request)
    offset = 0
    cr = None
    if "Content-Range" in request.headers:
        cr = ranges.parse_content_range(request.headers["Content-Range"])
        offset = cr.start
    zstd, chunked = body_coding(request)
    length = request.content_length
    if length is None and not chunked:
        raise InvalidRequest("Content-Length header is required (or chunked encoding)")
    if offset > ticket.size:  # whatever the body: an empty one writes nothing either
        raise _past_ticket(offset, offset, ticket)
    if length is not None and not zstd:
        if offset + length > ticket.size:
            raise _past_ticket(offset, offset + length, ticket)
        if cr is not None and cr.end is not None and cr.end - cr.start != length:
            raise InvalidRequest(
                f"Content-Range covers {cr.end - cr.start} bytes but the body has {length}"
            )
    # Chunked and zstd bodies tell their length only at their end: a
    # Content-Range end bounds them, so none lands past the declared range.
    limit = ticket.size
    if cr is not None and cr.end is not None:
        if cr.end > ticket.size:
            raise _past_ticket(cr.start, cr.end, ticket)
        limit = cr.end
    expected = parse_x_checksum(request.headers.get("X-Checksum"))
    hasher = xxhash.xxh3_128() if expected else None
    io = request.app[IO_KEY]
    async with ticket.operation():
        volume = await ticket_volume(io, ticket)
        log.info("WRITE offset=%d size=%s zstd=%s flush=%s", offset,
                 length if length is not None else "chunked", zstd, flush)
        try:
            with upload.client_errors(ticket.inactivity_timeout), \
                    ticket.moving_from(offset) as moved:
                written = await upload.receive(
                    upload.pieces(request.content), io, volume,
                    offset=offset, limit=limit, zstd=zstd, hasher=hasher,
                    check=ticket.check, idle_timeout=ticket.inactivity_timeout,
                    length=length, depth=request.app[CONFIG].transfer.write_depth,
                    progress=moved,
                )
                ticket.transferred.add(offset, offset + written)  # written, flushed or not
        except OutOfRange as e:
            if limit == ticket.size or e.size != limit:
                raise
            raise InvalidRequest(
                f"Content-Range covers {limit - offset} bytes but the body has more"
            ) from None
        if cr is not None and cr.end is not None and written != cr.end - cr.start:
            raise InvalidRequest(
                f"Content-Range covers {cr.end - cr.start} bytes but the body has {written}"
            )
        if flush:
            await io.run(volume.flush)
    if expected and hasher is not None and hasher.hexdigest() != expected:
        raise ChecksumMismatch(
            f"xxh3_128 of the received data is {hasher.hexdigest()}, "
            f"X-Checksum says {expected}; the data was written but does not match"
        )
    return _ok(close)


# No HEAD: aiohttp would run GET and send the image as its body (imageio: 405).
@routes.get("/images/{ticket_id}", allow_head=False)
async def get(request: web.Request) -> web.StreamResponse:
    ticket = authorize(request, "read")
    io = request.app[IO_KEY]
    async with ticket.operation():
        volume = await ticket_volume(io, ticket)
        size = min(ticket.size, await io.run(volume.size))
        header = request.headers.get("Range")
        if header is not None:
            r = ranges.parse_range(header, size)
            status = 206
        else:
            r = ranges.ByteRange(0, size)
            status = 200
        resp = web.StreamResponse(status=status)
        resp.content_type = "application/octet-stream"
        disposition = "attachment"
        if ticket.filename:
            disposition += f"; filename={ticket.filename}"
        resp.headers["Content-Disposition"] = disposition
        if status == 206:
            resp.headers["Content-Range"] = ranges.content_range(r, size)
        resp.content_length = r.length
        if _close_param(request):
            resp.force_close()
        log.info("READ offset=%d size=%d", r.start, r.length)
        if r.length:
            io.check_room(download.DEPTH)  # a clean 503 now, not a cut body later
        request[RESPONSE] = resp
        await resp.prepare(request)
        if r.length:
            # imageio's socket timeout after the first request is the
            # ticket's inactivity timeout: a send making no progress for
            # that long ends the download and frees its buffers.
            with download.ResponseSink(request, resp, ticket.inactivity_timeout) as sink:
                with ticket.moving_from(r.start) as moved:
                    sent = await download.send(sink, io, volume, r.start, r.end, ticket.check,
                                               progress=moved)
                ticket.transferred.add(r.start, r.start + sent)
        await resp.write_eof()
    return resp


@routes.patch("/images/{ticket_id}")
async def patch(request: web.Request) -> web.Response:
    ticket = authorize(request, "write")
    close = _close_param(request)
    msg = await read_json(request, ticket.inactivity_timeout)
    if "op" not in msg:
        raise InvalidRequest("Missing required value for 'op'")
    op = msg["op"]
    if op not in ("zero", "flush"):
        raise InvalidRequest(
            f"Unsupported value {op!r} for 'op', expecting one of ['flush', 'zero']"
        )
    io = request.app[IO_KEY]
    async with ticket.operation():
        volume = await ticket_volume(io, ticket)
        if op == "flush":
            await io.run(volume.flush)
            return _ok(close)
        size = _int(msg, "size", None)
        offset = _int(msg, "offset", 0)
        flush = msg.get("flush", False)
        if not isinstance(flush, bool):
            raise InvalidRequest("Boolean required for 'flush'")
        if offset + size > ticket.size:
            raise _past_ticket(offset, offset + size, ticket)
        log.info("ZERO offset=%d size=%d punch=%s flush=%s", offset, size, ticket.sparse, flush)
        await _zero(request, ticket, volume, offset, size)
        if flush:
            await io.run(volume.flush)
        ticket.transferred.add(offset, offset + size)
    return _ok(close)


async def _zero(
    request: web.Request, ticket: Ticket, volume: Volume, offset: int, size: int
) -> None:
    step = request.app[CONFIG].transfer.max_zero_step
    io = request.app[IO_KEY]
    end = offset + size
    while offset < end:
        ticket.check()
        n = min(step, end - offset)
        await io.run(volume.zero, offset, n, ticket.sparse)
        offset += n


def _int(msg: dict[str, Any], name: str, default: int | None) -> int:
    if name not in msg:
        if default is None:
            raise InvalidRequest(f"Missing required value for {name!r}")
        return default
    value = msg[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"Integer required for {name!r}: {value!r}")
    if value < 0:
        raise InvalidRequest(f"Invalid value {value} < 0 for {name!r}")
    return value


@routes.options("/images/{ticket_id}")
async def options(request: web.Request) -> web.Response:
    ticket_id = request.match_info["ticket_id"]
    features = ["checksum", "extents", "flush", "zero"]
    if ticket_id == "*":
        return web.json_response(
            {"features": features}, headers={"Allow": "OPTIONS,GET,PUT,PATCH"}
        )
    ticket = authorize(request, "read")
    ticket.touch()
    io = request.app[IO_KEY]
    async with ticket.operation():  # a DELETE meanwhile waits, then closes what it opened
        caps = (await ticket_volume(io, ticket)).capabilities
    writable = ticket.may("write")
    body: dict[str, Any] = {
        "features": features if writable else ["checksum", "extents"],
        # The backend's, whatever the ticket allows (imageio does the same).
        "max_readers": caps.max_readers,
        "max_writers": caps.max_writers,
    }
    allow = "OPTIONS,GET,PUT,PATCH" if writable else "OPTIONS,GET"
    return web.json_response(body, headers={"Allow": allow})


# imageio routes "/images/(.*)": an empty ticket id is its 400, not a 404.
@routes.get("/images/", allow_head=False)
@routes.put("/images/")
@routes.patch("/images/")
@routes.options("/images/")
async def no_ticket(request: web.Request) -> web.Response:
    raise InvalidRequest("Ticket id is required")


@routes.get("/info/")
async def info(request: web.Request) -> web.Response:
    from .. import __version__

    features = ["chunked", "zstd", "x-checksum", "xxh3_128", "ovf-store", "pool-map"]
    return web.json_response({"version": __version__, "server": "sluice", "features": features})


def _close_param(request: web.Request) -> bool:
    """``?close=y``: the engine's web admin asks to close the connection
    after the answer.  As in imageio, any other value keeps it open: it is
    read before the request does anything, and never refuses one (a 400
    after the data was written would report a failed upload that was not)."""
    return request.query.get("close") == "y"


def _ok(close: bool) -> web.Response:
    resp = web.Response(status=200)
    if close:
        resp.force_close()
    return resp
