"""python -m bench.ovf [--quick] [--out DIR] [--only store|engine] [--ovfs N]
                       [--vms SMALL LARGE] [--rounds N] [--work DIR]

Exit status as the image bench's: 0 when every row ran and moved the right
bytes, whatever the figures; 1 when a row errored or bytes differ; 2 when
the bench could not be set up; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .. import BenchError, log
from ..__main__ import _terminate, keep_logs
from ..facts import machine_facts
from ..workspace import PREFIX, SHM, make_workdir, remove
from . import enginebench, storebench
from .daemon import serve
from .measure import MemRow
from .report import RESULTS, SUMMARY, results_json, write

FULL: dict[str, Any] = {"ovfs": 10_000, "vms": (1_000, 10_000), "rounds": 3}
QUICK: dict[str, Any] = {"ovfs": 1_000, "vms": (100, 1_000), "rounds": 1}
PARTS = ("store", "engine")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ovf", description=(
        "OVF store benchmarks against a local `sluice serve`: the daemon receiving one "
        "store, and one `sluice-engine ovf update --once` pass; see bench/README.md."))
    p.add_argument("--quick", action="store_true",
                   help=f"CI size: {QUICK['ovfs']} OVFs, {QUICK['vms'][0]} and "
                        f"{QUICK['vms'][1]} VMs, {QUICK['rounds']} round")
    p.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "results",
                   help=f"where {RESULTS} and {SUMMARY} go (default bench/results)")
    p.add_argument("--only", choices=PARTS, help="run one part only")
    p.add_argument("--ovfs", type=int, metavar="N",
                   help=f"OVFs in the store part (default {FULL['ovfs']})")
    p.add_argument("--vms", type=int, nargs=2, metavar=("SMALL", "LARGE"),
                   help=f"VM counts of the engine part (default {FULL['vms']})")
    p.add_argument("--rounds", type=int, metavar="N",
                   help=f"rounds of each part, median reported (default {FULL['rounds']})")
    p.add_argument("--work", type=Path, default=Path("/var/tmp"),
                   help="parent of the temp work dir; must be a real disk, not tmpfs")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    args.ovfs = args.ovfs or preset["ovfs"]
    args.vms = tuple(args.vms or preset["vms"])
    args.rounds = args.rounds or preset["rounds"]
    if args.ovfs < 1 or args.rounds < 1 or not 4 <= args.vms[0] < args.vms[1]:
        p.error("--ovfs and --rounds must be >= 1, and --vms 4 <= SMALL < LARGE")
    return args


def reap_tars(parent: Path) -> None:
    """Tars in /dev/shm of benches whose work dir is gone (killed runs).

    They are named ``<work dir>-<what>.tar``; mkdtemp's part has no dash.
    """
    for tar in SHM.glob(f"{PREFIX}*.tar"):
        owner = "-".join(tar.name.split("-")[:PREFIX.count("-") + 1])
        if not (parent / owner).exists():
            remove(tar)


def run(args: argparse.Namespace, work: Path) -> dict[str, tuple[list[MemRow], dict[str, Any]]]:
    parts: dict[str, tuple[list[MemRow], dict[str, Any]]] = {}
    with serve(work / "sluice") as daemon:
        log(f"sluice up at {daemon.url}, default domain {daemon.sd}")
        if args.only in (None, "store"):
            parts["store"] = storebench.run(daemon, work, args.ovfs, args.rounds)
        if args.only in (None, "engine"):
            parts["engine"] = enginebench.run(daemon, work, args.vms, args.rounds)
    return parts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    start = time.monotonic()
    try:
        work = make_workdir(args.work)
        reap_tars(args.work)
        try:
            log(f"work dir {work}")
            parts = run(args, work)
            facts = machine_facts(work)
            failed = any(row.error for rows, _ in parts.values() for row in rows)
            keep_logs(work, args.out / "ovf-logs", failed)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except (BenchError, OSError) as e:
        log(f"FAILED: {e}")
        return 2
    except KeyboardInterrupt:
        log("interrupted; daemon stopped, work dir removed")
        return 130
    results = results_json(facts, parts, args.quick, time.monotonic() - start)
    print(write(args.out, results), end="")
    log(f"wrote {args.out / RESULTS} and {SUMMARY}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
