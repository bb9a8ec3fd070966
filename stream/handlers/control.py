"""The control API (unix socket only), compatible with ovirt-imageio's.

``PUT/GET/PATCH/DELETE /tickets/{id}``, and ``DELETE /tickets/`` for all.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from volume.errors import Conflict, InvalidRequest, NotFound
from volume.sd import VolumeInfo
from volume.storeguard import check_write_target
from volume.validate import check_uuid

from ..auth import ENGINE
from ..pool import Access
from ..state import AUTH, CONFIG, IO_KEY, JOBS, POOL
from ..ticketjson import check_timeout, parse_ticket
from ..tickets import Ticket
from .common import read_json

log = logging.getLogger(__name__)

routes = web.RouteTableDef()


@routes.put("/tickets/{ticket_id}", name=ENGINE + "put-ticket")
async def put_ticket(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    fields = parse_ticket(await read_json(request), cfg.transfer.inactivity_timeout)
    mgr = request.app[POOL]
    access = Access.WRITE if "write" in fields["ops"] else Access.READ
    io = request.app[IO_KEY]
    info = None
    within = None
    if "sd_id" in fields:
        sd = check_uuid(fields["sd_id"], "storage domain")
        mgr.check(sd, access)
        info = await io.run(mgr.registry.volume, sd, fields["img_id"], fields["vol_id"])
        if access is Access.WRITE:
            check_write_target(info)
        domain_uuid, real = sd, info.path
    else:
        domain, real = await io.run(mgr.registry.resolve, fields["path"],
                                    access is Access.WRITE)
        mgr.check(domain.uuid, access)
        domain_uuid = domain.uuid
        if domain.type == "file":
            within = domain.path
    _check_free(request, info, real, fields.get("url", ""), access is Access.WRITE)
    ticket = Ticket(
        uuid=fields["uuid"], size=fields["size"], ops=fields["ops"],
        timeout=fields["timeout"], url=fields.get("url", ""), path=real, volume_info=info,
        inactivity_timeout=fields["inactivity_timeout"], sparse=fields["sparse"],
        dirty=fields["dirty"], transfer_id=fields.get("transfer_id"),
        filename=fields.get("filename"), domain=domain_uuid, within=within,
    )
    auth = request.app[AUTH]
    old = auth.peek(ticket.uuid)
    if old is not None and old.path == ticket.path and not old.canceled \
            and _key(old.volume_info) == _key(ticket.volume_info):
        # Re-adding the same ticket (vdsm does on retries): the one in use
        # stays, renewed, with its transfers and open volume.  It never
        # leaves the table: a request may not start on an object that then
        # goes untracked (by DELETE, by the in-use checks of volumes).
        old.renew(ticket)
        ticket = old
    else:
        if old is not None:
            # Refuse the old one's requests, and wait for those running; if
            # they do not end in time, the add fails (409) and changes nothing
            # but that: the old ticket stays, canceled, until deleted.
            await old.cancel(cfg.transfer.remove_timeout)
            # Again, with no await from here to the add: while the old one
            # was waited for, a DELETE or a copy job may have begun on the
            # volume, or a new map made the ticket illegal (and canceled
            # the tickets it found, this one not among them yet).
            mgr.check(domain_uuid, access)
            _check_free(request, info, real, fields.get("url", ""), access is Access.WRITE)
        auth.add(ticket)
        if old is not None:
            await _close(request, old)
        if info is not None:
            # Looked up again with the ticket in place: a DELETE of the volume
            # that ended since the first look-up would leave it naming freed
            # space (a DELETE that starts now sees the ticket, and refuses).
            try:
                await io.run(mgr.registry.volume, info.sd_uuid, info.img_uuid, info.vol_uuid)
            except NotFound:
                auth.discard(ticket)
                await _retire(request, ticket)  # requests may have begun on it
                raise
    log.info("ADD ticket=%s transfer=%s size=%d ops=%s domain=%s", ticket.uuid[:8],
             ticket.log_id, ticket.size, ",".join(ticket.ops), domain_uuid)
    return web.Response(status=200)


def _key(info: VolumeInfo | None) -> tuple[str, str, str] | None:
    """The volume a ticket names by UUIDs: the volumes of a block domain
    share their device's path, so the path alone does not tell them apart
    (a renewed ticket keeps serving the volume it opened)."""
    return None if info is None else info.key


def _check_free(request: web.Request, info: VolumeInfo | None, real: str, url: str,
                write: bool) -> None:
    """Conflict if the ticket's volume is being deleted, or, for a write
    ticket, written by a copy job (one writer per volume)."""
    if info is not None:
        request.app[AUTH].check_not_deleting(info)
        job = request.app[JOBS].using(info.key)
    else:
        job = request.app[JOBS].using(path=real)
    if write and job is not None:
        what = f"volume {info.img_uuid}/{info.vol_uuid}" if info else url
        raise Conflict(f"{what} is in use by job {job.id} ({job.state})")


@routes.get("/tickets/{ticket_id}", name=ENGINE + "get-ticket")
async def get_ticket(request: web.Request) -> web.Response:
    ticket = request.app[AUTH].get(request.match_info["ticket_id"])
    return web.json_response(ticket.info())


@routes.patch("/tickets/{ticket_id}", name=ENGINE + "patch-ticket")
async def patch_ticket(request: web.Request) -> web.Response:
    ticket = request.app[AUTH].get(request.match_info["ticket_id"])
    msg = await read_json(request)
    if "timeout" not in msg:
        raise InvalidRequest("Missing required value for 'timeout'")
    ticket.extend(check_timeout("timeout", msg["timeout"]))
    return web.Response(status=200)


@routes.delete("/tickets/{ticket_id}", name=ENGINE + "delete-ticket")
async def delete_ticket(request: web.Request) -> web.StreamResponse:
    auth = request.app[AUTH]
    ticket_id = request.match_info.get("ticket_id", "")
    targets = auth.all() if ticket_id == "" else [t for t in auth.all() if t.uuid == ticket_id]
    # All at once: each refuses new requests now, and one transfer that
    # does not stop in time leaves the others removed (one after the
    # other, the first busy ticket kept every later one usable).
    results = await asyncio.gather(
        *(t.cancel(request.app[CONFIG].transfer.remove_timeout) for t in targets),
        return_exceptions=True)
    busy: list[Conflict] = []
    for ticket, result in zip(targets, results, strict=True):
        if isinstance(result, Conflict):
            busy.append(result)  # stays, canceled, until deleted again
            continue
        if isinstance(result, BaseException):
            raise result
        auth.discard(ticket)  # not one re-added under its id meanwhile
        await _close(request, ticket)
        log.info("REMOVE ticket=%s transfer=%s", ticket.uuid[:8], ticket.log_id)
    if busy:
        raise Conflict("; ".join(e.detail for e in busy))
    return web.Response(status=204)


@routes.delete("/tickets/", name=ENGINE + "delete-tickets")
async def delete_tickets(request: web.Request) -> web.StreamResponse:
    return await delete_ticket(request)


# imageio routes "/tickets/(.*)": an empty ticket id is its 400 (it lists
# no tickets), DELETE excepted (all tickets).
@routes.get("/tickets/", name=ENGINE + "get-no-ticket", allow_head=False)
@routes.put("/tickets/", name=ENGINE + "put-no-ticket")
@routes.patch("/tickets/", name=ENGINE + "patch-no-ticket")
async def no_ticket(request: web.Request) -> web.Response:
    raise InvalidRequest("Ticket id is required")


async def _retire(request: web.Request, ticket: Ticket) -> None:
    """Cancel ``ticket``, out of the table, and close its volume once its
    requests have ended (now, or later if they outlast the cancel's wait)."""
    try:
        await ticket.cancel(request.app[CONFIG].transfer.remove_timeout)
    except Conflict:
        async def close_when_idle() -> None:
            await ticket.idle()
            await _close(request, ticket)

        task = asyncio.create_task(close_when_idle(), name=f"close-{ticket.uuid[:8]}")
        _RETIRING.add(task)
        task.add_done_callback(_RETIRING.discard)
        return
    await _close(request, ticket)


#: Closes waiting for a retired ticket's last requests (kept from the GC).
_RETIRING: set[asyncio.Task[None]] = set()


async def _close(request: web.Request, ticket: Ticket) -> None:
    for volume in ticket.take_volumes():
        await request.app[IO_KEY].run(volume.close)
