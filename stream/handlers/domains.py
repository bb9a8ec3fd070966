"""Storage domains and their volumes on the control API.

``POST /domains`` formats a new domain (a directory, or block devices);
the engine then puts it in the pool map.  Volume operations are gated by
the map: creating, resizing and deleting need ``Active``; listing and
looking up work on any domain in the map.  A domain's OVF stores are the
daemon's: deleting or resizing one is refused (403).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeGuard

from aiohttp import web

from volume.blockdomain import create_block_domain, open_block_domain
from volume.errors import Conflict, InvalidRequest, VolumeError
from volume.filedomain import FileDomain, create_file_domain, open_file_domain
from volume.ovfstore import check_store_layout, ensure_stores
from volume.sd import Content, StorageDomain, VolumeInfo
from volume.storeguard import check_deletable, check_write_target
from volume.validate import check_uuid

from ..auth import ENGINE
from ..pool import Access
from ..state import AUTH, CONFIG, IO_KEY, JOBS, OVF_UPDATES, POOL
from .common import read_json

routes = web.RouteTableDef()
VOLUME = "/domains/{sd}/images/{img}/volumes/{vol}"


def _create_domain(msg: dict[str, Any], stores: int, store_size: int) -> StorageDomain:
    """Format the domain and give it its OVF stores (blocking).

    The stores' layout is checked before anything is formatted; and a
    domain of this UUID already at the location (made by a request that
    failed or crashed before its stores were all made) is finished, not
    refused: nothing else can complete it, nor format its location again.
    """
    count = msg.get("ovf_stores", stores)
    size = msg.get("ovf_store_size", store_size)
    check_store_layout(count, size)
    storage = _format(msg)
    ensure_stores(storage, count, size)
    return storage


def _format(msg: dict[str, Any]) -> StorageDomain:
    extra = set(msg) - {"uuid", "type", "location", "ovf_stores", "ovf_store_size"}
    if extra:
        raise InvalidRequest(f"unknown domain fields: {', '.join(sorted(extra))}")
    sd = check_uuid(msg.get("uuid"), "storage domain")
    kind, location = msg.get("type"), msg.get("location")
    if kind == "file":
        if not _is_path(location):
            raise InvalidRequest("a file domain's location is one absolute directory path")
        try:
            return create_file_domain(location, sd)
        except Conflict as e:
            return _made_before(e, lambda: open_file_domain(location, sd))
    if kind == "block":
        if not isinstance(location, list) or not all(map(_is_path, location)):
            raise InvalidRequest("a block domain's location is a list of absolute device "
                                 "paths")
        try:
            return create_block_domain(location, sd)
        except Conflict as e:
            return _made_before(e, lambda: open_block_domain(location, sd))
    raise InvalidRequest(f"domain type must be 'file' or 'block', not {kind!r}")


def _made_before(refused: Conflict,
                 open_domain: Callable[[], StorageDomain]) -> StorageDomain:
    """The domain of this very UUID and location, made by an earlier
    request; else ``refused``, the create's own answer."""
    try:
        return open_domain()
    except (InvalidRequest, VolumeError):  # another domain's, or none whole
        raise refused from None


def _is_path(value: object) -> TypeGuard[str]:
    """An absolute path, as the pool map takes it (never the daemon's cwd)."""
    return isinstance(value, str) and value.startswith("/") and "\0" not in value


@routes.post("/domains", name=ENGINE + "create-domain")
async def create_domain(request: web.Request) -> web.Response:
    msg = await read_json(request)
    ovf = request.app[CONFIG].ovf
    storage = await request.app[IO_KEY].run(_create_domain, msg, ovf.stores, ovf.store_size)
    body = {"uuid": storage.uuid, "type": storage.type, "location": list(storage.location)}
    return web.json_response(body, status=201)


async def _storage(request: web.Request, access: Access) -> StorageDomain:
    mgr = request.app[POOL]
    sd = check_uuid(request.match_info["sd"], "storage domain")
    mgr.check(sd, access)
    return await request.app[IO_KEY].run(mgr.registry.storage, sd)


@routes.get("/domains/{sd}/volumes", name=ENGINE + "list-volumes")
async def list_volumes(request: web.Request) -> web.Response:
    storage = await _storage(request, Access.READ)
    image = request.query.get("image")
    if image is not None:
        image = check_uuid(image, "image")
    volumes = await request.app[IO_KEY].run(storage.list_volumes, image)
    return web.json_response({"volumes": [v.to_json() for v in volumes]})


@routes.post("/domains/{sd}/volumes", name=ENGINE + "create-volume")
async def create_volume(request: web.Request) -> web.Response:
    storage = await _storage(request, Access.WRITE)
    msg = await read_json(request)
    allowed = {"img_id", "vol_id", "size", "format", "allocation", "content", "parent",
               "description", "legal"}
    extra = set(msg) - allowed
    if extra:
        raise InvalidRequest(f"unknown volume fields: {', '.join(sorted(extra))}")
    size = msg.get("size")
    if not isinstance(size, int) or isinstance(size, bool):
        raise InvalidRequest(f"size must be an integer, not {size!r}")
    kwargs = {k: msg[k] for k in ("format", "allocation", "content", "parent", "description",
                                  "legal") if k in msg}
    info = await request.app[IO_KEY].run(
        storage.create_volume,
        check_uuid(msg.get("img_id"), "image"), check_uuid(msg.get("vol_id"), "volume"),
        size, **kwargs,
    )
    return web.json_response(info.to_json(), status=201)


@routes.get(VOLUME, name=ENGINE + "get-volume")
async def get_volume(request: web.Request) -> web.Response:
    """The volume, and ``in_use``: what on this host may still read or write
    it (None if nothing), so that an engine deleting a disk of a shared
    domain can ask every host that serves it, not only the one deleting."""
    storage = await _storage(request, Access.READ)
    m = request.match_info
    info, real_path = await request.app[IO_KEY].run(_lookup, storage, m["img"], m["vol"])
    return web.json_response({**info.to_json(), "in_use": _user(request, info, real_path)})


@routes.patch(VOLUME, name=ENGINE + "patch-volume")
async def patch_volume(request: web.Request) -> web.Response:
    """``{"size": N}`` grows the volume; ``{"legal": bool}`` marks its
    content complete or not (an upload's, when it is verified)."""
    storage = await _storage(request, Access.WRITE)
    msg = await read_json(request)
    if not msg or set(msg) - {"size", "legal"}:
        raise InvalidRequest('PATCH of a volume takes "size", "legal" or both, not '
                             f"{', '.join(sorted(msg)) or 'nothing'}")
    size, legal = msg.get("size"), msg.get("legal")
    if "size" in msg and (not isinstance(size, int) or isinstance(size, bool)):
        raise InvalidRequest(f"size must be an integer, not {size!r}")
    if "legal" in msg and not isinstance(legal, bool):
        raise InvalidRequest(f"legal must be true or false, not {legal!r}")
    m = request.match_info
    io = request.app[IO_KEY]
    if legal is not None:
        key = (storage.uuid, check_uuid(m["img"], "image"), check_uuid(m["vol"], "volume"))
        job = request.app[JOBS].using(key)
        if job is not None and job.writes == key:
            # The job marks it: complete once verified, else incomplete.  A
            # mark now would be undone, or outlive a copy that then fails.
            raise Conflict(f"volume {key[1]}/{key[2]} is the destination of job {job.id} "
                           f"({job.state}), which marks it complete once verified")
    if size is not None:
        info, real_path = await io.run(_lookup, storage, m["img"], m["vol"])
        writer = request.app[AUTH].on_volume(info, real_path, writers=True)
        if writer is not None and str(info.format) == "qcow2":
            # qemu-img opens the header the ticket's holder may be rewriting.
            raise Conflict(f"volume {info.img_uuid}/{info.vol_uuid} is qcow2 and transfer "
                           f"ticket {writer.uuid} may write it; resize it once that ended")
        job = request.app[JOBS].using(info.key)
        if job is not None and str(info.format) == "qcow2":
            # A copy writes (or reads) the file's bytes, header included:
            # qemu-img's new header would be overwritten, or land behind
            # the copy's read-back, and the job end "done" all the same.
            raise Conflict(f"volume {info.img_uuid}/{info.vol_uuid} is qcow2 and job "
                           f"{job.id} ({job.state}) uses it; resize it once that ended")

    def change() -> VolumeInfo:
        info = storage.lookup(m["img"], m["vol"])
        if legal is not None:
            check_write_target(info)  # an OVF store's validity is its commit record
        if size is not None:
            info = storage.resize_volume(m["img"], m["vol"], size)
        if legal is not None:
            info = storage.set_legal(m["img"], m["vol"], legal)
        return info
    info = await io.run(change)
    return web.json_response(info.to_json())


@routes.delete(VOLUME, name=ENGINE + "delete-volume")
async def delete_volume(request: web.Request) -> web.Response:
    storage = await _storage(request, Access.WRITE)
    m = request.match_info
    io = request.app[IO_KEY]
    info, real_path = await io.run(_lookup_to_delete, storage, m["img"], m["vol"])
    check_deletable(info)  # the domain refuses it too; first, so not a 409 if in use
    user = _user(request, info, real_path)
    if user is not None:
        # A block domain gives a deleted volume's space to the next one: the
        # late writes of a transfer would land in another disk.
        raise Conflict(f"volume {info.img_uuid}/{info.vol_uuid} is in use by {user}; "
                       "end it first")
    deleting = request.app[AUTH].deleting
    deleting.add(info.key)  # no await since the check: no ticket came in between
    try:
        await io.run(storage.delete_volume, m["img"], m["vol"])
    finally:
        deleting.discard(info.key)
    return web.Response(status=204)


def _lookup(storage: StorageDomain, img: str, vol: str) -> tuple[VolumeInfo, str]:
    """The volume and the real path of its data (blocking)."""
    info = storage.lookup(img, vol)
    return info, os.path.realpath(info.path)


def _lookup_to_delete(storage: StorageDomain, img: str,
                      vol: str) -> tuple[VolumeInfo, str]:
    """The volume to delete and the real path of its data's name (blocking).

    Only a file domain's directory can hold a link planted in place of a
    volume's file, and its delete removes the link, never following it: so
    the link does not refuse the delete, and a ticket added by the file's
    path (its real path then) is found by the name, not by the link's target.
    """
    if not isinstance(storage, FileDomain):
        return _lookup(storage, img, vol)
    info = storage.lookup_to_delete(img, vol)
    where = os.path.realpath(os.path.dirname(info.path))
    return info, os.path.join(where, os.path.basename(info.path))


def _user(request: web.Request, info: VolumeInfo, real_path: str) -> str | None:
    """What may still read or write the volume: a ticket (by UUIDs, or by
    the path of a whole-file volume), a copy job, or an OVF store update."""
    ticket = request.app[AUTH].on_volume(info, real_path)
    if ticket is not None:
        return f"transfer ticket {ticket.uuid}"
    if info.key in request.app[AUTH].deleting:
        return "another request deleting it"
    job = request.app[JOBS].using(info.key)
    if job is not None:
        return f"job {job.id} ({job.state})"
    if info.content == Content.OVF_STORE and request.app[OVF_UPDATES].lock(
            info.sd_uuid).locked():
        return "an OVF store update of its domain"
    return None
