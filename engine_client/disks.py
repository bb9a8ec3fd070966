"""One verified volume copy between storage domains (issue 6, the engine side).

A copy creates (or reuses) the destination volume with the same UUIDs,
opens a read ticket on the source host when another host serves the
destination, runs ``POST /jobs/copy`` there and checks how it ended: job
``done``, transit, source and destination checksums equal (or ``qemu-img
compare`` for a format change), destination ``legal``.  A failed or
canceled copy leaves the source as it was and the destination marked
incomplete; running the command again copies anew into it.  Whole disks
(snapshots, the cache, a move's removal) are ``diskmove``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .cache import Cache
from .errors import EngineError, HostError, InvalidInput, NotFound
from .hostapi import Clients, HostClient
from .hostvol import (
    VolumeRef,
    add_ticket,
    cancel_job,
    create_volume,
    delete_ticket,
    get_job,
    get_volume,
    list_volumes,
    start_copy,
    ticket_size,
    volume_users,
)
from .model import Disk, DomainStatus, Host
from .ovf import canonical_uuid

Report = Callable[[dict[str, Any]], None]
ACTIVE_STATES = ("pending", "running", "verifying")


class DiskError(EngineError):
    """A copy, move or transfer that did not finish; the message says what holds."""


@dataclass
class Ctx:
    cache: Cache
    clients: Clients
    report: Report = field(default=lambda _: None)
    #: Seconds between ``GET /jobs/{id}``: a bar that moves, a cheap request.
    poll: float = 0.25


@dataclass
class Copied:
    source: VolumeRef
    destination: VolumeRef
    host: str
    job: str
    format: str
    checksum: str | None
    bytes_copied: int
    reused: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source.to_json(), "destination": self.destination.to_json(),
                "host": self.host, "job": self.job, "format": self.format,
                "checksum": self.checksum, "bytes_copied": self.bytes_copied,
                "reused_destination": self.reused,
                "verified_with": "qemu-img compare" if self.checksum is None
                else "xxh3_128 block hash", **self.extra}


def serving(cache: Cache, sd_uuid: str) -> list[Host]:
    hosts = [h for h in cache.hosts() if sd_uuid in h.domains]
    if not hosts:
        raise DiskError(f"no host serves storage domain {sd_uuid}; give it one with "
                        "'sluice-engine host add NAME URL --domain SD'")
    return hosts


async def check_unused(ctx: Ctx, sd_uuid: str, refs: list[VolumeRef], what: str,
                       outcome: str) -> None:
    """DiskError unless every host serving ``sd_uuid`` says nothing of its own
    uses ``refs`` (see ``hostvol.volume_users``); ``outcome`` ends the message."""
    for host in serving(ctx.cache, sd_uuid):
        try:
            used = await volume_users(ctx.clients(host), refs)
        except HostError as e:
            raise DiskError(f"cannot ask host {host.name}, which serves {sd_uuid}, whether "
                            f"it uses {what} ({e.detail}); {outcome}") from None
        if used:
            raise DiskError(f"{what} is in use: {'; '.join(used)}; {outcome}")


def locate(cache: Cache, disk_uuid: str) -> tuple[str, list[Disk]]:
    """The disk's domain and its rows (one per VM or template that has it)."""
    disk = canonical_uuid(disk_uuid, "disk")
    rows = [d for d in cache.disks() if d.disk_uuid == disk]
    if not rows:
        raise NotFound(f"disk {disk} is not known; import or create its VM first")
    sds = sorted({d.sd_uuid for d in rows})
    if len(sds) > 1:
        raise DiskError(f"disk {disk} is recorded on several domains ({', '.join(sds)}); "
                        "fix it with 'sluice-engine vm set-disk' first")
    return sds[0], rows


async def source_volume(c: HostClient, sd_uuid: str, image: str) -> dict[str, Any]:
    """The one data volume of ``image`` on ``sd_uuid``, legal."""
    volumes = await list_volumes(c, sd_uuid, image)
    found = [v for v in volumes if v.get("content") == "DATA"]
    if not found and volumes:
        raise DiskError(f"disk {image} on {sd_uuid} is an {volumes[0].get('content')} "
                        "volume, not a data disk (OVF stores are read with "
                        f"GET /domains/{sd_uuid}/ovf-store)")
    if not found:
        raise DiskError(f"storage domain {sd_uuid} holds no volume of disk {image}")
    if len(found) > 1:
        raise DiskError(f"disk {image} has {len(found)} volumes (snapshots) on {sd_uuid}; "
                        "only disks of one volume can be copied")
    if not found[0].get("legal", True):
        raise DiskError(f"the volume of disk {image} on {sd_uuid} is marked incomplete "
                        "(an unfinished copy or upload); it cannot be a source")
    return found[0]


def _target_format(ctx: Ctx, dst_sd: str, src_fmt: str, fmt: str | None) -> str:
    if ctx.cache.domain(dst_sd).type == "block":
        if fmt == "qcow2":
            raise InvalidInput(f"storage domain {dst_sd} is a block domain; it holds raw "
                               "volumes only")
        return "raw"
    return fmt or src_fmt


def _choose(src: list[Host], dst: list[Host], convert: bool) -> tuple[Host, Host]:
    both = [h for h in dst if h in src]
    if both:
        return both[0], both[0]
    if convert:
        raise DiskError("a format change needs one host that serves both domains; none does")
    return src[0], dst[0]


def check_result(job: dict[str, Any], convert: bool) -> str | None:
    """The verified checksum of a done job, or DiskError."""
    r = job.get("result") or {}
    if convert:
        if r.get("verified_with") != "qemu-img compare":
            raise DiskError(f"copy job {job['id']} ended without a qemu-img comparison")
        return None
    sums = [(r.get(k) or {}).get("checksum")
            for k in ("checksum", "source_checksum", "destination_checksum")]
    if None in sums or len(set(sums)) != 1:
        raise DiskError(f"the checksums of copy job {job['id']} differ (sent {sums[0]}, "
                        f"source {sums[1]}, destination {sums[2]})")
    return str(sums[0])


async def _follow(ctx: Ctx, c: HostClient, job: dict[str, Any]) -> dict[str, Any]:
    job_id = str(job["id"])
    try:
        while job["state"] in ACTIVE_STATES:
            await asyncio.sleep(ctx.poll)
            job = await get_job(c, job_id)
            ctx.report({"event": "progress", "job": job_id, "state": job["state"],
                        "bytes_done": job["bytes_done"], "bytes_total": job["bytes_total"]})
    except asyncio.CancelledError:
        # Ctrl-C: stop the job on the host, whatever happens to us next.
        with contextlib.suppress(EngineError):
            await asyncio.shield(cancel_job(c, job_id))
        ctx.report({"event": "canceled", "job": job_id, "host": c.host.name})
        raise
    return job


async def transfer(ctx: Ctx, src_sd: str, image: str, dst: VolumeRef,
                   fmt: str | None = None, allocation: str | None = None) -> Copied:
    """Copy the one volume of ``image`` on ``src_sd`` into ``dst`` (created if
    missing, reused if it matches) and verify it; the cache is not touched."""
    src = await source_volume(ctx.clients(serving(ctx.cache, src_sd)[0]), src_sd, image)
    return await copy_volume(ctx, src_sd, image, src, dst, fmt, allocation)


async def copy_volume(ctx: Ctx, src_sd: str, image: str, src: dict[str, Any], dst: VolumeRef,
                      fmt: str | None = None, allocation: str | None = None, *,
                      parent: str | None = None, chain: frozenset[str] = frozenset()
                      ) -> Copied:
    """Copy the source volume ``src`` (as listed by its host) into ``dst``;
    ``parent``: the destination's parent volume (a snapshot chain, copied
    base first); ``chain``: the other volumes of that chain, which the
    destination may already hold."""
    if ctx.cache.domain(dst.sd_uuid).status != DomainStatus.ACTIVE:
        raise DiskError(f"storage domain {dst.sd_uuid} is not Active")
    src_hosts, dst_hosts = serving(ctx.cache, src_sd), serving(ctx.cache, dst.sd_uuid)
    source = VolumeRef(src_sd, image, str(src["vol_uuid"]))
    size, src_fmt = int(src["size"]), str(src["format"])
    target = _target_format(ctx, dst.sd_uuid, src_fmt, fmt)
    convert = target != src_fmt
    src_host, dst_host = _choose(src_hosts, dst_hosts, convert)
    sc, dc = ctx.clients(src_host), ctx.clients(dst_host)
    old = await get_volume(dc, dst)
    reused = old is not None
    # Even beside a volume to reuse: a stale snapshot left on top of it would
    # hide the copied data from the guest.
    others = [v for v in await list_volumes(dc, dst.sd_uuid, dst.img_uuid)
              if v.get("vol_uuid") not in chain | {dst.vol_uuid}]
    if others:
        raise DiskError(f"storage domain {dst.sd_uuid} already holds other volumes of "
                        f"disk {dst.img_uuid}; remove them first")
    if old is None:
        # Incomplete until the job verified it: a job that never ran (refused,
        # or Ctrl-C while pending) must not leave an empty disk that looks whole.
        await create_volume(dc, dst, size, target, allocation or str(src["allocation"]),
                            f"copy of {image} from {src_sd}", parent=parent, legal=False)
        ctx.report({"event": "volume", "action": "created", **dst.to_json()})
    elif (int(old["size"]), old["format"], old.get("parent")) != (size, target, parent):
        raise DiskError(f"storage domain {dst.sd_uuid} already holds volume {dst.vol_uuid} "
                        f"with another size, format or parent; delete it first")
    url = None
    if src_host == dst_host:
        spec: dict[str, Any] = source.to_json()
    else:
        url = await add_ticket(sc, source, ticket_size(size, src_fmt), ["read"])
        spec = {"url": url, "format": src_fmt}
    try:
        job = await start_copy(dc, spec, dst)
        ctx.report({"event": "started", "job": job["id"], "host": dst_host.name,
                    "source_host": src_host.name, "format": target})
        job = await _follow(ctx, dc, job)
    finally:
        if url is not None:
            with contextlib.suppress(EngineError):
                await asyncio.shield(delete_ticket(sc, url))
    if job["state"] != "done":
        raise DiskError(f"the copy {job['state']} on host {dst_host.name}: "
                        f"{job.get('error') or 'no reason given'}; the source is untouched "
                        "and the destination is marked incomplete, so running the command "
                        "again copies anew")
    checksum = check_result(job, convert)
    info = await get_volume(dc, dst)
    if info is None or not info.get("legal"):
        raise DiskError(f"copy job {job['id']} ended but the destination volume is not legal")
    return Copied(source, dst, dst_host.name, str(job["id"]), target, checksum,
                  int(job["bytes_done"]), reused)
