"""python -m bench [--quick] [--out DIR] [--size MiB] [--rounds N] [--only NAME...]

Exit status: 0 when every row ran and moved the right bytes, whatever the
speed; 1 when a row errored (a peer did not start, a transfer failed, bytes
differ); 2 when the bench itself could not be set up; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from . import BenchError, MiB, log
from .facts import machine_facts
from .limits import limit_jobs
from .peers import PEERS
from .report import results_json, write
from .runner import run_jobs, selector, start_peer
from .tls import make_tls
from .workspace import workspace

FULL = {"size": 2048, "rounds": 3}
QUICK = {"size": 256, "rounds": 1}
ROW_KINDS = "limits, " + ", ".join(PEERS)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=(
        "Upload/download throughput of Sluice against dd O_DIRECT, ovirt-imageio and nginx, "
        "all on 127.0.0.1; see bench/README.md."))
    p.add_argument("--quick", action="store_true",
                   help=f"CI size: {QUICK['size']} MiB image, {QUICK['rounds']} round")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results",
                   help="where results.json and summary.txt go (default bench/results)")
    p.add_argument("--size", type=int, metavar="MiB",
                   help=f"image size (default {FULL['size']}, quick {QUICK['size']})")
    p.add_argument("--rounds", type=int, metavar="N",
                   help=f"rounds per row, median reported (default {FULL['rounds']}, "
                        f"quick {QUICK['rounds']})")
    p.add_argument("--only", nargs="+", default=[], metavar="NAME",
                   help=f"peers ({ROW_KINDS}), row names or globs like '*/upload/tls/*'")
    p.add_argument("--work", type=Path, default=Path("/var/tmp"),
                   help="parent of the temp work dir; must be a real disk, not tmpfs")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    args.size = args.size or preset["size"]
    args.rounds = args.rounds or preset["rounds"]
    if args.size < 16 or args.rounds < 1:
        p.error("--size must be >= 16 MiB and --rounds >= 1")
    return args


def keep_logs(work: Path, dest: Path, failed: bool) -> None:
    """Copy the peers' logs out of the work dir when a row failed."""
    shutil.rmtree(dest, ignore_errors=True)  # a previous run's
    if not failed:
        return
    for log_file in work.glob("*/*.log"):
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log_file, dest / f"{log_file.parent.name}-{log_file.name}")
    log(f"peer logs kept in {dest}")


def _terminate(signo: int, frame: FrameType | None) -> None:
    # Unwind like Ctrl-C, so every peer's finally runs.
    raise KeyboardInterrupt(signal.Signals(signo).name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    selected = selector(args.only)
    size = args.size * MiB
    start = time.monotonic()
    try:
        with workspace(args.work, size) as ws:
            log(f"work dir {ws.root}, image {args.size} MiB, {args.rounds} round(s)")
            tls = make_tls(ws.root / "tls")
            jobs = limit_jobs(ws, selected)
            rows = [job.row for job in jobs]
            with ExitStack() as peers:
                for peer in PEERS.values():
                    started_rows, started_jobs = start_peer(peers, peer, ws, tls, selected)
                    rows += started_rows
                    jobs += started_jobs
                run_jobs(jobs, ws, args.rounds)
            facts = machine_facts(ws.root)
            keep_logs(ws.root, args.out / "logs", any(row.error for row in rows))
    except (BenchError, OSError) as e:
        log(f"FAILED: {e}")
        return 2
    except KeyboardInterrupt:
        log("interrupted; peers stopped, work dir removed")
        return 130
    if not rows:
        log(f"--only {' '.join(args.only)} matched no row")
        return 2
    results = results_json(facts, size, args.rounds, args.quick, rows,
                           time.monotonic() - start)
    print(write(args.out, results), end="")
    log(f"wrote {args.out / 'results.json'} and summary.txt")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
