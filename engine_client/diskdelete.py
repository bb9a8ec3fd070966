"""``disk delete``: remove a disk's volumes from one domain.

For what no VM or template has: an upload nobody attached, what a failed
copy left on another domain (a copy keeps its disk's UUID), a disk the
user no longer wants.  A disk the cache says a VM or template has on that
domain is refused: its OVF would name a disk that is gone.  Volumes go
leaves first, so no volume is ever left without its parent; once the
first is gone the others are marked incomplete: the host refuses a
volume a ticket or a copy job is using, on any host serving the domain
(a host knows only its own), before the first is deleted; what a later
refusal (a ticket that came in between) leaves half way is never taken
for the disk.  OVF stores are the
daemon's (it refuses to delete them, and so does this).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from .cache import Cache
from .config import Config
from .disklist import owners
from .disks import Ctx, check_unused, serving
from .errors import HostError, InvalidInput, NotFound
from .hostvol import VolumeRef, delete_volume, list_volumes, set_legal
from .ovf import canonical_uuid
from .report import count


def leaves_first(volumes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``volumes`` ordered so each comes before its parent."""
    left = list(volumes)
    ordered: list[dict[str, Any]] = []
    while left:
        parents = {v.get("parent") for v in left}
        leaves = [v for v in left if v["vol_uuid"] not in parents] or left  # a cycle: any
        ordered += leaves
        left = [v for v in left if v not in leaves]
    return ordered


async def delete_disk(ctx: Ctx, disk: str, sd: str) -> dict[str, Any]:
    users = sorted(owners(ctx.cache).get((disk, sd), []))
    if users:
        raise InvalidInput(f"disk {disk} on {sd} is a disk of {', '.join(users)}; "
                           "delete or change that first")
    host = serving(ctx.cache, sd)[0]
    c = ctx.clients(host)
    volumes = await list_volumes(c, sd, disk)
    if not volumes:
        raise NotFound(f"storage domain {sd} holds no volume of disk {disk}")
    kinds = {str(v.get("content")) for v in volumes} - {"DATA"}
    if kinds:
        raise InvalidInput(f"disk {disk} on {sd} is an {kinds.pop()} volume, which the "
                           "daemon keeps; only data disks are deleted")
    refs = [VolumeRef(sd, disk, str(v["vol_uuid"])) for v in leaves_first(volumes)]
    await check_unused(ctx, sd, refs, f"disk {disk}", "nothing was deleted")
    removed: list[str] = []
    for i, ref in enumerate(refs):
        try:
            await delete_volume(c, ref)  # a refused first one changes nothing
            removed.append(ref.vol_uuid)
            ctx.report({"event": "volume", "action": "removed", **ref.to_json()})
            if i == 0:
                # The disk is no longer whole: should a later delete be
                # refused (a base a ticket still reads), what is left must
                # never be taken for it.
                for rest in refs[1:]:
                    await set_legal(c, rest, False)
        except HostError as e:
            if not removed:
                raise
            raise HostError(host.name, f"removed {count(len(removed), 'volume')} of disk "
                            f"{disk} ({', '.join(removed)}), then: {e.detail}; the rest is "
                            "marked incomplete: run the command again once it is free",
                            e.status, e.code) from None
    return {"disk": disk, "sd": sd, "host": host.name, "volumes": len(volumes)}


def run(cache: Cache, cfg: Config, args: argparse.Namespace) -> int:
    from .diskcli import with_ctx
    from .progress import Progress

    disk = canonical_uuid(args.disk, "disk")
    sd = cache.domain(canonical_uuid(args.domain, "domain")).uuid
    progress = Progress(f"delete {disk}", args.json)
    try:
        summary = with_ctx(cache, cfg, progress, lambda ctx: delete_disk(ctx, disk, sd))
    except asyncio.CancelledError:
        print("sluice-engine: canceled; the volumes listed as removed are gone, the "
              "others stay", file=sys.stderr)
        return 1
    finally:
        progress.close()
    progress.result(summary, f"deleted disk {disk} from {sd} "
                             f"({count(summary['volumes'], 'volume')})")
    return 0
