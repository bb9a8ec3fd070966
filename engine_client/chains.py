"""Disks with snapshots: a chain of volumes, copied base first.

A disk with snapshots is a chain on its domain: a base volume (raw or
qcow2) and qcow2 volumes on top, each naming its parent by volume UUID.
oVirt moves the whole chain.  So does Sluice, between file domains: each
volume is created on the destination with the same UUIDs and the same
parent, once its parent there is copied and verified, and copied byte for
byte (its qcow2 header names the parent by the same relative name, so the
copy is a chain again), each with its own verified job.  A block domain
holds raw volumes without parents: a chain cannot go there as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .disks import Copied, Ctx, DiskError, copy_volume, serving
from .hostapi import HostClient
from .hostvol import VolumeRef, list_volumes


def order(volumes: Sequence[dict[str, Any]], sd_uuid: str, image: str) -> list[dict[str, Any]]:
    """The DATA volumes of an image, base first; DiskError unless they form
    one chain (one base, each other volume the only child of the previous)."""
    data = [v for v in volumes if v.get("content", "DATA") == "DATA"]
    if not data:
        raise DiskError(f"storage domain {sd_uuid} holds no volume of disk {image}")
    by_parent: dict[str | None, list[dict[str, Any]]] = {}
    for v in data:
        by_parent.setdefault(v.get("parent"), []).append(v)
    chain: list[dict[str, Any]] = []
    parent: str | None = None
    while parent in by_parent:
        children = by_parent.pop(parent)
        if len(children) > 1:
            names = ", ".join(sorted(str(c["vol_uuid"]) for c in children))
            raise DiskError(f"disk {image} on {sd_uuid} is not one chain: volumes {names} "
                            f"share the parent {parent or '(none)'}")
        chain.append(children[0])
        parent = str(children[0]["vol_uuid"])
    if by_parent:
        stray = ", ".join(sorted(str(v["vol_uuid"]) for vs in by_parent.values() for v in vs))
        raise DiskError(f"disk {image} on {sd_uuid} has volumes outside its chain: {stray}")
    for v in chain:
        if not v.get("legal", True):
            raise DiskError(f"volume {v['vol_uuid']} of disk {image} on {sd_uuid} is marked "
                            "incomplete (an unfinished copy or upload); it cannot be a source")
    return chain


async def source_chain(c: HostClient, sd_uuid: str, image: str) -> list[dict[str, Any]]:
    """The disk's volumes on ``sd_uuid``, base first (one for a disk without snapshots)."""
    return order(await list_volumes(c, sd_uuid, image), sd_uuid, image)


async def copy_chain(ctx: Ctx, src_sd: str, image: str, chain: Sequence[dict[str, Any]],
                     dst_sd: str, fmt: str | None, allocation: str | None = None
                     ) -> list[Copied]:
    """Copy every volume of ``chain`` (base first) to ``dst_sd``, each verified."""
    if ctx.cache.domain(dst_sd).type == "block":
        raise DiskError(f"disk {image} has {len(chain)} volumes (snapshots); storage domain "
                        f"{dst_sd} is a block domain, which holds raw volumes without "
                        "parents: remove or merge its snapshots first")
    if fmt is not None and any(str(v["format"]) != fmt for v in chain):
        raise DiskError(f"disk {image} has {len(chain)} volumes (snapshots); a chain is "
                        "copied in its own formats, without --format")
    if allocation is not None and any(str(v["allocation"]) != allocation for v in chain):
        raise DiskError(f"disk {image} has {len(chain)} volumes (snapshots); a chain is "
                        "copied with its own allocation, without --allocation")
    serving(ctx.cache, dst_sd)  # a clear error before anything is created
    names = frozenset(str(v["vol_uuid"]) for v in chain)
    copied: list[Copied] = []
    parent: str | None = None
    for v in chain:
        dst = VolumeRef(dst_sd, image, str(v["vol_uuid"]))
        ctx.report({"event": "chain", "volume": dst.vol_uuid, "index": len(copied),
                    "volumes": len(chain)})
        copied.append(await copy_volume(ctx, src_sd, image, v, dst, parent=parent,
                                        chain=names - {dst.vol_uuid}))
        parent = dst.vol_uuid
    return copied
