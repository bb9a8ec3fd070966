"""``vm create``: a VM (or template) whose disks live on chosen domains.

Each disk is created empty on the domain asked (``--disk SIZE@DOMAIN``),
attached as it is (``--attach DISK@DOMAIN``, say one that ``disk upload``
made), or cloned from a template's disk onto another domain (``--from-
template T --to DOMAIN...``: full, verified copies with new UUIDs, oVirt's
"clone" allocation).  Then an OVF is written and imported into the cache as
``vm import`` would, so the next OVF pass puts the VM into the store of
every domain that holds one of its disks.  If a step fails, the volumes
this command created are removed again and the cache is left unchanged.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .disklist import owners
from .disks import Ctx, DiskError, serving, source_volume, transfer
from .entities import ImportItem
from .errors import EngineError, InvalidInput
from .hostvol import VolumeRef, create_volume, delete_volume
from .ovf import canonical_uuid, parse
from .ovfwriter import BLANK, OvfDiskSpec, OvfSpec, write

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise InvalidInput(f"{text!r} is not a size (bytes, or a number with K, M, G or T)")
    size = int(m.group(1)) * _UNITS[m.group(2).upper()]
    if size <= 0 or size % 512:
        raise InvalidInput(f"a disk size must be a positive multiple of 512 bytes, not {size}")
    return size


@dataclass(frozen=True)
class NewDisk:
    size: int
    sd_uuid: str
    format: str = "raw"


def parse_new_disk(text: str) -> NewDisk:
    """``SIZE@DOMAIN[:raw|qcow2]``."""
    size, sep, rest = text.partition("@")
    sd, _, fmt = rest.partition(":")
    if not sep or fmt not in ("", "raw", "qcow2"):
        raise InvalidInput(f"--disk takes SIZE@DOMAIN[:raw|qcow2], not {text!r}")
    return NewDisk(parse_size(size), canonical_uuid(sd, "storage domain"), fmt or "raw")


def parse_attach(text: str) -> tuple[str, str]:
    disk, sep, sd = text.partition("@")
    if not sep:
        raise InvalidInput(f"--attach takes DISK@DOMAIN, not {text!r}")
    return canonical_uuid(disk, "disk"), canonical_uuid(sd, "storage domain")


async def create_vm(ctx: Ctx, name: str, disks: Sequence[NewDisk],
                    attach: Sequence[tuple[str, str]] = (), template: str | None = None,
                    to: Sequence[str] = (), as_template: bool = False) -> dict[str, Any]:
    if not name.strip() or not name.isprintable():
        raise InvalidInput(f"a VM name must be printable and not empty, not {name!r}")
    for d in disks:
        ctx.cache.domain(d.sd_uuid)
    vm = str(uuid.uuid4())
    created: list[VolumeRef] = []
    specs: list[OvfDiskSpec] = []
    tpl_id, tpl_name = BLANK, "Blank"
    try:
        if template is not None:
            tpl = ctx.cache.entity(template)
            if tpl.kind != "template":
                raise InvalidInput(f"{tpl.name} ({tpl.uuid}) is a VM, not a template")
            tpl_id, tpl_name = tpl.uuid, tpl.name
            specs += await _clone(ctx, tpl.uuid, [canonical_uuid(t, "storage domain")
                                                  for t in to], created)
        for d in disks:
            ref = VolumeRef(d.sd_uuid, str(uuid.uuid4()), str(uuid.uuid4()))
            c = ctx.clients(serving(ctx.cache, d.sd_uuid)[0])
            await create_volume(c, ref, d.size, d.format, "sparse", f"disk of {name}")
            created.append(ref)
            ctx.report({"event": "volume", "action": "created", **ref.to_json()})
            specs.append(OvfDiskSpec(ref.img_uuid, ref.vol_uuid, ref.sd_uuid, d.size, d.format))
        for disk, sd in attach:
            users = sorted(owners(ctx.cache).get((disk, sd), []))
            if users:  # not shareable (the OVF says so): one VM writes it
                raise InvalidInput(f"disk {disk} on {sd} is a disk of {', '.join(users)}; "
                                   "--attach takes a disk no VM or template has (an "
                                   "upload, say)")
            v = await source_volume(ctx.clients(serving(ctx.cache, sd)[0]), sd, disk)
            specs.append(OvfDiskSpec(disk, str(v["vol_uuid"]), sd, int(v["size"]),
                                     str(v["format"]), str(v["allocation"])))
        data = write(OvfSpec(vm, name, specs, template=as_template, template_id=tpl_id,
                             template_name=tpl_name), ctx.cache.pool().pool_id)
        ctx.cache.import_entities([ImportItem(f"vm create {name}", parse(data), data)])
    except BaseException:
        await _undo(ctx, created)
        raise
    return {"uuid": vm, "name": name, "kind": "template" if as_template else "vm",
            "template": None if template is None else tpl_id,
            "disks": [{"disk": s.disk_uuid, "volume": s.vol_uuid, "sd": s.sd_uuid,
                       "size": s.size, "format": s.format} for s in specs]}


async def _clone(ctx: Ctx, tpl: str, to: Sequence[str], created: list[VolumeRef]
                 ) -> list[OvfDiskSpec]:
    data = ctx.cache.ovf(tpl)
    tdisks = parse(data).disks if data else ()
    if len(to) not in (0, 1, len(tdisks)):
        raise InvalidInput(f"the template has {len(tdisks)} disks: give one --to for all, "
                           "or one per disk in its order")
    placed = {d.disk_uuid: d.sd_uuid for d in ctx.cache.disks(tpl)}
    specs = []
    for i, td in enumerate(tdisks):
        src_sd = placed[td.disk_uuid]
        dst_sd = to[i] if len(to) > 1 else (to[0] if to else src_sd)
        ref = VolumeRef(dst_sd, str(uuid.uuid4()), str(uuid.uuid4()))
        created.append(ref)
        copied = await transfer(ctx, src_sd, td.disk_uuid, ref)
        v = await source_volume(ctx.clients(serving(ctx.cache, dst_sd)[0]), dst_sd,
                                ref.img_uuid)
        specs.append(OvfDiskSpec(ref.img_uuid, ref.vol_uuid, dst_sd, int(v["size"]),
                                 copied.format, str(v["allocation"])))
    return specs


async def _undo(ctx: Ctx, created: list[VolumeRef]) -> None:
    for ref in reversed(created):
        with contextlib.suppress(EngineError, DiskError):
            await delete_volume(ctx.clients(serving(ctx.cache, ref.sd_uuid)[0]), ref)
