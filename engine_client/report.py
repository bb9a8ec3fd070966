"""Plain-text tables for the command line (``--json`` prints the data instead)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .cache import Cache
from .entities import Imported
from .model import Domain, Store, VmStatus
from .passreport import PassReport

if TYPE_CHECKING:  # it imports aiohttp: slow for commands that need no network
    from .poolsync import HostReport


def count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless one: "1 OVF", "2 OVFs"."""
    return f"{n} {noun}{'s' * (n != 1)}"


def out(args: argparse.Namespace, data: Any, text: Callable[[], str]) -> None:
    """Print ``data`` as JSON with ``--json``, else the table ``text()`` makes."""
    print(json.dumps(data, indent=2, sort_keys=True) if getattr(args, "json", False)
          else text())


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces; None prints as ``-``."""
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def when(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


def imported(done: Sequence[Imported]) -> str:
    return table(["uuid", "name", "kind", "action", "generation", "file"],
                 [(i.uuid, i.name, i.kind, i.action, i.db_generation, i.source) for i in done])


def entities(cache: Cache) -> str:
    disks: dict[str, list[str]] = {}
    for d in cache.disks():
        flags = "".join(f for f, on in (("S", d.shareable), ("L", d.locked),
                                          ("I", not d.active)) if on)
        disks.setdefault(d.entity_uuid, []).append(
            d.sd_uuid[:8] + (f"({flags})" if flags else ""))
    rows = []
    for e in cache.entities():
        try:
            status = VmStatus(e.status).label
        except ValueError:
            status = str(e.status)
        rows.append((e.uuid, e.name, e.kind, status, e.db_generation, e.ovf_generation,
                     ",".join(disks.get(e.uuid, [])) or "none"))
    return table(["uuid", "name", "kind", "status", "db_gen", "ovf_gen", "disk domains"], rows)


def domains(found: Sequence[Domain], stores: Sequence[Store]) -> str:
    by_sd = {s.sd_uuid: s for s in stores}
    rows = []
    for d in found:
        s = by_sd.get(d.uuid)
        rows.append((d.uuid, d.type, d.status, ",".join(d.location),
                     None if s is None else ("outdated" if s.outdated else "updated")))
    return table(["uuid", "type", "status", "location", "ovf store"], rows)


def stores(found: Sequence[Store]) -> str:
    return table(
        ["domain", "state", "generation", "last updated", "entities", "host", "failures",
         "next retry", "last error"],
        [(s.sd_uuid, "outdated" if s.outdated else "updated", s.generation,
          when(s.last_updated), len(s.stored), s.host, s.failures,
          when(s.next_attempt) if s.next_attempt else None, s.last_error) for s in found])


def update_pass(r: PassReport) -> str:
    lines = [f"entities: {r.processed_count} processed, {r.skipped_count} skipped, "
             f"{len(r.deleted)} deletions; pass took {r.seconds:.3f} s"]
    lines += [f"  skipped {o.kind} {o.name} ({o.uuid}): {o.reason}" for o in r.skipped]
    if r.skipped_count > len(r.skipped):
        lines.append(f"  ... and {r.skipped_count - len(r.skipped)} more skipped (see the log)")
    if not r.domains:
        lines.append("domains: none outdated")
        return "\n".join(lines)
    lines.append(table(
        ["domain", "result", "host", "generation", "ovfs", "bytes", "sent", "zstd", "seconds",
         "detail"],
        [(d.sd_uuid, d.outcome, d.host, d.generation, d.entities, d.tar_length, d.sent,
          None if d.zstd is None else ("yes" if d.zstd else "no"), d.seconds,
          f"{d.detail} (retry at {when(d.retry_at)})" if d.outcome == "failed" else d.detail)
         for d in r.domains]))
    return "\n".join(lines)


def pool(reports: Sequence[HostReport]) -> str:
    return table(["host", "url", "state", "engine version", "host version", "detail"],
                 [(h.host, h.url, h.state, h.expected_version, h.reported_version, h.detail)
                  for h in reports])
