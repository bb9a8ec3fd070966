"""``sluice-engine domain maintenance|activate|detach``: the flows of
``flows``, with their steps as a list (or ``--json``).  A stopped flow
prints where it left the domain, then fails with one sentence (exit 1)."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import TYPE_CHECKING, Any

from .cache import Cache
from .config import Config

if TYPE_CHECKING:
    from .flows import FlowReport

FLOWS = {
    "maintenance": "put a domain in maintenance, its OVF store refreshed first",
    "activate": "activate a domain in maintenance, then refresh its OVF store",
    "detach": "take a domain in maintenance out of the pool with its VMs, its OVF "
              "store refreshed first",
}


def add_parsers(domain: Any) -> None:
    """The flow actions, on the ``domain`` command's subparsers."""
    for name, text in FLOWS.items():
        s = domain.add_parser(name, help=text)
        s.add_argument("uuid")
        if name != "activate":
            s.add_argument("--force", action="store_true",
                           help="go on even if the OVF store cannot be refreshed")
        s.add_argument("--json", action="store_true", help="machine-readable output")


def text(report: FlowReport) -> str:
    end = report.status or "detached"
    lines = [f"domain {report.sd_uuid}: {report.flow} "
             f"{'done' if report.ok else 'stopped'}, now {end}"
             + (" (forced past a failed OVF refresh)" if report.forced else "")]
    lines += [f"  - {step}" for step in report.steps]
    if report.dropped:
        lines.append(f"  {len(report.dropped)} VMs and templates left with it: "
                     + ", ".join(report.dropped[:10]) + (" ..." if report.dropped[10:] else ""))
    return "\n".join(lines)


def run(cache: Cache, cfg: Config, args: argparse.Namespace) -> int:
    return asyncio.run(_run(cache, cfg, args))


async def _run(cache: Cache, cfg: Config, args: argparse.Namespace) -> int:
    from .flows import FlowFailed, Flows  # aiohttp: only for commands that talk to hosts

    flows = Flows(cache, cfg)
    try:
        if args.action == "maintenance":
            report = await flows.maintenance(args.uuid, args.force)
        elif args.action == "detach":
            report = await flows.detach(args.uuid, args.force)
        else:
            report = await flows.activate(args.uuid)
    except FlowFailed as e:
        _print(args, e.report)
        raise
    finally:
        await flows.close()
    _print(args, report)
    return 0


def _print(args: argparse.Namespace, report: FlowReport) -> None:
    print(json.dumps(report.to_json(), indent=2, sort_keys=True) if args.json
          else text(report))
