"""``sluice-engine disk list``: the disks on storage domains, as their
hosts list them, with the VMs and templates of the cache that have them.

The cache knows the disks of its VMs and templates; a disk no VM has (an
upload not attached yet, what a failed copy left) is known only to its
domain.  One host serving each domain is asked (``GET
/domains/{sd}/volumes``; the next one if it fails), and its answer joined
with the cache: a disk is an image, its volumes a chain, the top one's
format and size are the disk's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from .cache import Cache
from .config import Config
from .disks import Ctx, DiskError, serving
from .errors import HostError
from .hostvol import list_volumes
from .ovf import canonical_uuid
from .report import out, table

COLUMNS = ["disk", "domain", "content", "format", "size", "volumes", "legal", "used by"]


def _disks(sd: str, volumes: Sequence[dict[str, Any]],
           owners: dict[tuple[str, str], list[str]]) -> list[dict[str, Any]]:
    chains: dict[str, list[dict[str, Any]]] = {}
    for v in volumes:
        chains.setdefault(str(v.get("img_uuid")), []).append(v)
    found = []
    for image, chain in sorted(chains.items()):
        parents = {v.get("parent") for v in chain}
        top = next((v for v in chain if v.get("vol_uuid") not in parents), chain[-1])
        found.append({
            "disk": image, "domain": sd, "content": top.get("content"),
            "format": top.get("format"), "size": top.get("size"), "volumes": len(chain),
            "legal": all(v.get("legal", True) for v in chain),
            "used_by": owners.get((image, sd), []),
        })
    return found


def owners(cache: Cache) -> dict[tuple[str, str], list[str]]:
    """``{(disk, domain): ["vm NAME", "template NAME", ...]}`` from the cache.

    By disk and domain: a copy keeps its disk's UUID, and the one on
    another domain (left by a failed copy) is no VM's."""
    names = {e.uuid: f"{e.kind} {e.name}" for e in cache.entities()}
    found: dict[tuple[str, str], list[str]] = {}
    for d in cache.disks():
        found.setdefault((d.disk_uuid, d.sd_uuid), []).append(
            names.get(d.entity_uuid, d.entity_uuid))
    return found


async def list_disks(ctx: Ctx, domains: Sequence[str]
                     ) -> tuple[list[dict[str, Any]], list[str]]:
    """The disks of ``domains``, and why a domain could not be listed (no
    host serves it, or none of them answered), one sentence each."""
    used_by = owners(ctx.cache)
    found: list[dict[str, Any]] = []
    failed: list[str] = []
    for sd in domains:
        errors = []
        try:
            hosts = serving(ctx.cache, sd)
        except DiskError as e:
            failed.append(str(e))
            continue
        for host in hosts:
            try:
                volumes = await list_volumes(ctx.clients(host), sd, None)
            except HostError as e:
                errors.append(str(e))
                continue
            found += _disks(sd, volumes, used_by)
            break
        else:
            failed.append(f"no host listed the disks of domain {sd}: {'; '.join(errors)}")
    return found, failed


def run(cache: Cache, cfg: Config, args: argparse.Namespace) -> int:
    """The table (or JSON) of what could be listed; exit 1 with one
    sentence if a domain could not be, 1 on Ctrl-C."""
    from .diskcli import with_ctx

    domains = ([cache.domain(canonical_uuid(args.domain, "domain")).uuid] if args.domain
               else [d.uuid for d in cache.domains()])
    try:
        found, failed = with_ctx(cache, cfg, None, lambda ctx: list_disks(ctx, domains))
    except asyncio.CancelledError:
        print("sluice-engine: canceled; nothing was changed", file=sys.stderr)
        return 1
    out(args, found, lambda: table(COLUMNS, [
        (d["disk"], d["domain"], d["content"], d["format"], d["size"], d["volumes"],
         "yes" if d["legal"] else "no", ", ".join(d["used_by"]) or None) for d in found]))
    if failed:
        more = f" (and {len(failed) - 1} more domains)" if len(failed) > 1 else ""
        raise DiskError(f"{failed[0]}{more}")
    return 0
