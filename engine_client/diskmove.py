"""``disk copy|move DISK --to DOMAIN``: a whole disk, its snapshots included.

The copy itself is ``disks.transfer`` for a disk of one volume and
``chains.copy_chain`` for one with snapshots; either way every volume is
verified before the new domain is recorded in the cache (the next OVF
pass rewrites both domains' stores).  A move then removes the source
volumes, top first; the removal is journaled before the cache changes, so
one that fails is done by the next copy or move of the disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

from .cache import Cache
from .chains import copy_chain, source_chain
from .disks import Ctx, DiskError, check_unused, locate, serving, transfer
from .errors import HostError
from .hostvol import VolumeRef, delete_volume

JOURNAL = "pending-removals.json"


def _journal(cache: Cache) -> str:
    return os.path.join(cache.state_dir, JOURNAL)


def _read_journal(cache: Cache) -> dict[str, dict[str, Any]]:
    try:
        with open(_journal(cache)) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise DiskError(f"cannot read {_journal(cache)}: {e}") from None
    return data if isinstance(data, dict) else {}


def _write_journal(cache: Cache, data: dict[str, dict[str, Any]]) -> None:
    """Replace the journal with ``data``: through a file of this writer's
    own (two moves at once shared one name, and one renamed the other's
    half-written file into place, or found it gone)."""
    path = _journal(cache)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{JOURNAL}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _update_journal(cache: Cache, change: Callable[[dict[str, dict[str, Any]]], object]
                    ) -> None:
    """Read, ``change`` and write the journal as one step: two moves at once
    (two processes) each wrote what it had read, and the entry of the other
    was lost, its old volumes never removed.  An ``flock`` held for a read
    and a write, milliseconds."""
    fd = os.open(_journal(cache) + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = _read_journal(cache)
        change(data)
        _write_journal(cache, data)
    finally:
        os.close(fd)


async def _remove_pending(ctx: Ctx, disk: str, current_sd: str) -> dict[str, Any] | None:
    """Remove the old volumes a move left behind (top first), never those on
    ``current_sd``."""
    entry = _read_journal(ctx.cache).get(disk)
    if entry is None:
        return None
    # "vol_ids": a chain, base first; an entry of one volume has "vol_id" only.
    volumes = [str(v) for v in entry.get("vol_ids", [entry["vol_id"]])]
    if entry["sd_id"] != current_sd:  # else the disk went back there since: it is live
        c = ctx.clients(serving(ctx.cache, entry["sd_id"])[0])
        await check_unused(ctx, entry["sd_id"], [
            VolumeRef(entry["sd_id"], entry["img_id"], vol) for vol in volumes],
            f"the old copy of disk {disk} on {entry['sd_id']}",
            "the disk is on its new domain; run the command again to remove the old copy "
            "once it is free")
        for vol in reversed(volumes):
            ref = VolumeRef(entry["sd_id"], entry["img_id"], vol)
            try:
                await delete_volume(c, ref)
            except HostError as e:
                if e.status != 404:
                    raise DiskError(f"disk {disk} is on its new domain, but removing its old "
                                    f"volume {vol} on {ref.sd_uuid} failed ({e}); run the "
                                    "command again") from None
                continue  # gone already (a run cut short after removing it)
            ctx.report({"event": "removed", **ref.to_json()})
    _update_journal(ctx.cache, lambda data: data.pop(disk, None))
    return entry if entry["sd_id"] != current_sd else None


async def copy_disk(ctx: Ctx, disk_uuid: str, dst_sd: str, *, move: bool,
                    fmt: str | None = None, allocation: str | None = None) -> dict[str, Any]:
    """``disk copy|move DISK --to DOMAIN``; answers a summary for ``--json``."""
    src_sd, rows = locate(ctx.cache, disk_uuid)
    disk = rows[0].disk_uuid
    dst_sd = ctx.cache.domain(dst_sd).uuid
    summary: dict[str, Any] = {"disk": disk, "action": "move" if move else "copy",
                               "from": src_sd, "to": dst_sd, "state": "done"}
    if src_sd == dst_sd:
        removed = await _remove_pending(ctx, disk, dst_sd) if move else None
        return {**summary, "already_there": True, "source_removed": removed is not None}
    # First what an earlier move left: its entry names another domain than
    # src_sd (removed now, before this move's entry replaces it), or src_sd
    # itself (that move died before recording: the disk lives there).
    await _remove_pending(ctx, disk, src_sd)
    chain = await source_chain(ctx.clients(serving(ctx.cache, src_sd)[0]), src_sd, disk)
    if len(chain) == 1:
        dst = VolumeRef(dst_sd, disk, str(chain[0]["vol_uuid"]))
        done = [await transfer(ctx, src_sd, disk, dst, fmt, allocation)]
    else:
        done = await copy_chain(ctx, src_sd, disk, chain, dst_sd, fmt, allocation)
    if move:
        top = done[-1].source
        entry = {**top.to_json(), "vol_ids": [c.source.vol_uuid for c in done]}
        _update_journal(ctx.cache, lambda data: data.__setitem__(disk, entry))
    for row in rows:
        ctx.cache.set_disk(row.entity_uuid, disk, dst_sd)
    ctx.report({"event": "recorded", "disk": disk, "sd_id": dst_sd,
                "entities": [r.entity_uuid for r in rows]})
    # A copy that lands where an earlier move left an old volume makes it live.
    removed = await _remove_pending(ctx, disk, dst_sd) if move or disk in _read_journal(
        ctx.cache) else None
    result = {**summary, **done[-1].to_json(), "entities": [r.entity_uuid for r in rows],
              "source_removed": removed is not None}
    if len(done) > 1:
        result["bytes_copied"] = sum(c.bytes_copied for c in done)
        result["volumes"] = [c.to_json() for c in done]
    return result
