"""Copy jobs on the control API: ``POST /jobs/copy``, ``GET/DELETE /jobs/{id}``."""

from __future__ import annotations

import os
import ssl
import uuid as uuidlib
from typing import Any

from aiohttp import web

from volume import filedata, qcow2
from volume.errors import Conflict, Error, InvalidRequest
from volume.sd import VolumeInfo, open_data
from volume.storeguard import check_write_target
from volume.validate import check_uuid

from .. import convert
from ..auth import ENGINE
from ..copy import LocalSource, RemoteSource, Source, copy
from ..jobs import Job, last_step
from ..pool import Access, PoolMap
from ..state import AUTH, CONFIG, IO_KEY, JOBS, POOL
from .common import read_json

routes = web.RouteTableDef()


async def _volume(request: web.Request, spec: Any, access: Access, what: str) -> VolumeInfo:
    if not isinstance(spec, dict) or set(spec) != {"sd_id", "img_id", "vol_id"}:
        raise InvalidRequest(f"{what} must be {{sd_id, img_id, vol_id}}")
    mgr = request.app[POOL]
    sd = check_uuid(spec["sd_id"], f"{what} storage domain")
    mgr.check(sd, access)
    return await request.app[IO_KEY].run(mgr.registry.volume, sd, spec["img_id"],
                                         spec["vol_id"])


def _ssl(spec: dict[str, Any]) -> ssl.SSLContext | bool:
    if spec.get("insecure") is True:
        return False
    cafile = spec.get("cafile") or None
    if cafile is not None and not isinstance(cafile, str):
        raise InvalidRequest(f"source cafile must be a file name, not {cafile!r}")
    try:
        return ssl.create_default_context(cafile=cafile)
    except OSError as e:  # missing, unreadable, or not PEM (ssl.SSLError)
        raise InvalidRequest(f"source cafile {cafile} cannot be used: "
                             f"{e.strerror or e}") from None


@routes.post("/jobs/copy", name=ENGINE + "copy")
async def start_copy(request: web.Request) -> web.Response:
    msg = await read_json(request)
    job_id = check_uuid(msg.get("job_id") or str(uuidlib.uuid4()), "job_id")
    dst = await _volume(request, msg.get("destination"), Access.WRITE, "destination")
    check_write_target(dst)
    spec = msg.get("source")
    io = request.app[IO_KEY]
    src_info: VolumeInfo | None = None
    if isinstance(spec, dict) and "url" in spec:
        url = spec["url"]
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InvalidRequest("source url must be an http(s) image URL with its ticket")
        fmt = spec.get("format", "raw")
        if fmt != str(dst.format):
            raise InvalidRequest("a format change needs a local source: copy the image to "
                                 "this host first, then convert it")
        ctx = _ssl(spec)
    else:
        src_info = await _volume(request, spec, Access.READ, "source")
        if src_info.key == dst.key:
            raise InvalidRequest("the source and the destination are the same volume")
        if not src_info.legal:
            raise Conflict(f"source volume {'/'.join(src_info.key)} is incomplete (a copy "
                           "into it failed or is running)")
        if src_info.size > dst.size:
            raise InvalidRequest(f"the destination ({dst.size} bytes) is smaller than the "
                                 f"source ({src_info.size} bytes)")
        if src_info.format == dst.format and src_info.parent != dst.parent:
            # A qcow2 goes as it is: its header, naming its parent, with it.
            raise InvalidRequest(
                f"the source's parent ({src_info.parent}) is not the destination's "
                f"({dst.parent}): a qcow2 copied as it is names its source's parent")
    described = {"source": spec, "destination": msg.get("destination")}

    mgr = request.app[POOL]
    storage = await io.run(mgr.registry.storage, dst.sd_uuid)

    def check_map(pool: PoolMap) -> None:
        """The job's domains must keep allowing it (raises if not)."""
        pool.check(dst.sd_uuid, Access.WRITE)
        if src_info is not None:
            pool.check(src_info.sd_uuid, Access.READ)

    def map_changed(pool: PoolMap) -> None:
        try:
            check_map(pool)
        except Error as e:
            job.stop(f"the pool map changed: {e.detail}")

    async def run(job: Job) -> None:
        # Incomplete until verified: a failed or canceled copy leaves it so.
        await io.run(storage.set_legal, dst.img_uuid, dst.vol_uuid, False)
        await _copy(job)
        await last_step(io.run(storage.set_legal, dst.img_uuid, dst.vol_uuid, True))

    async def _copy(job: Job) -> None:
        if src_info is not None and src_info.format != dst.format:
            await convert.convert(job, io, src_info, dst)
            return
        volume = await io.run(open_data, dst, False)
        source: Source | None = None
        try:
            if src_info is not None:
                src_volume = await io.run(open_data, src_info, True)
                # A qcow2 goes as it is: its file's bytes, not its virtual size.
                size = await io.run(src_volume.size) if str(src_info.format) == "qcow2" \
                    else src_info.size
                source = LocalSource(io, src_volume, size)
            else:
                source = RemoteSource(io, url, ctx,
                                      request.app[CONFIG].transfer.write_depth)
            # A qcow2 file copied as it is: its file size is not its virtual size.
            grow = str(dst.format) == "qcow2" and dst.length is None
            await copy(io, job, source, volume, punch=str(dst.allocation) == "sparse",
                       grow=grow)
            if str(dst.format) == "qcow2":
                # The header came from the source: it must name the
                # destination's parent, and no other file (422 otherwise).
                await io.run(_check_header, dst)
        finally:
            if source is not None:
                await source.close()
            await io.run(volume.close)

    used = [(v, await io.run(os.path.realpath, v.path)) for v in (dst, src_info) if v]
    # From here to the start, no await: what is checked still holds when the
    # job is registered (a DELETE or a write ticket then sees it).
    check_map(mgr.current)  # it may have changed while we looked the volumes up
    auth = request.app[AUTH]
    for volume, real_path in used:
        auth.check_not_deleting(volume)  # a DELETE may have begun meanwhile
        writer = auth.on_volume(volume, real_path, writers=True)
        if writer is not None:  # one writer per volume; a source must hold still
            raise Conflict(f"volume {volume.img_uuid}/{volume.vol_uuid} is in use by "
                           f"transfer ticket {writer.uuid}, which may write it")
    job = request.app[JOBS].start(Job(
        job_id, "copy", described, writes=dst.key, reads=src_info.key if src_info else None,
        paths=tuple(p for v, p in used if v.length is None)), run)
    unwatch = mgr.watch(map_changed)
    assert job.task is not None
    job.task.add_done_callback(lambda _: unwatch())
    return web.json_response(job.to_json(), status=201)


def _check_header(info: VolumeInfo) -> None:
    """UnsafeImage unless the qcow2 volume's header names only its parent."""
    fd = filedata.open_fd(info, os.O_RDONLY | os.O_CLOEXEC)
    try:
        qcow2.check_fd(fd, info.vol_uuid, info.parent)
    finally:
        os.close(fd)


@routes.get("/jobs/{job_id}", name=ENGINE + "get-job")
async def get_job(request: web.Request) -> web.Response:
    return web.json_response(request.app[JOBS].get(request.match_info["job_id"]).to_json())


@routes.delete("/jobs/{job_id}", name=ENGINE + "cancel-job")
async def cancel_job(request: web.Request) -> web.Response:
    job = await request.app[JOBS].cancel(request.match_info["job_id"])
    return web.json_response(job.to_json())
