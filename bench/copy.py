"""python -m bench.copy [--quick] [--out DIR] [--work DIR] [--rounds N] [sizes]

Host-to-host copy between two Sluice daemons on 127.0.0.1, against a
single-stream upload (issue 6's targets); see bench/README.md.  Exit
status as `python -m bench`: 0 when every row ran and moved the right
bytes, whatever the speed; 1 when a row errored or bytes differ; 2 when
the bench could not be set up; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from . import BenchError, MiB, log
from .__main__ import _terminate, keep_logs
from .copyhosts import host, shm_host
from .copyreport import (
    COPY,
    COPY_DATA,
    COPY_SPARSE,
    DD_COPY,
    DD_WRITE_READING,
    SHM_COPY,
    SHM_COPY_DATA,
    SHM_COPY_SPARSE,
    UPLOAD,
    CopyRow,
    results_json,
    write,
)
from .copyrows import make_images, run_round
from .facts import machine_facts
from .workspace import SHM, workspace

FULL = {"size": 2048, "sparse": 20480, "data": 1024, "rounds": 3}
QUICK = {"size": 256, "sparse": 4096, "data": 256, "rounds": 1}
EXTENTS = 8
#: Room kept free beyond the images: the daemons' OVF stores, logs, slack.
MARGIN = 1024 * MiB


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.copy", description=(
        "Host-to-host copy jobs between two Sluice daemons on 127.0.0.1, against a "
        "single-stream upload; see bench/README.md."))
    p.add_argument("--quick", action="store_true", help=(
        f"CI sizes: {QUICK['size']} MiB dense, {QUICK['sparse']} MiB sparse holding "
        f"{QUICK['data']} MiB, {QUICK['rounds']} round"))
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results",
                   help="where copy-results.json and copy-summary.txt go (default bench/results)")
    p.add_argument("--work", type=Path, default=Path("/var/tmp"),
                   help="parent of the temp work dir; must be a real disk, not tmpfs")
    p.add_argument("--size", type=int, metavar="MiB",
                   help=f"dense image (default {FULL['size']}, quick {QUICK['size']})")
    p.add_argument("--sparse", type=int, metavar="MiB",
                   help=f"sparse image (default {FULL['sparse']}, quick {QUICK['sparse']})")
    p.add_argument("--data", type=int, metavar="MiB",
                   help=f"data in the sparse image (default {FULL['data']}, "
                        f"quick {QUICK['data']})")
    p.add_argument("--rounds", type=int, metavar="N",
                   help=f"rounds per row (default {FULL['rounds']}, quick {QUICK['rounds']})")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key in ("size", "sparse", "data", "rounds"):
        setattr(args, key, getattr(args, key) or preset[key])
    if args.size < 16 or args.data < EXTENTS or args.data > args.sparse or args.rounds < 1:
        p.error(f"need --size >= 16, {EXTENTS} <= --data <= --sparse, --rounds >= 1")
    return args


def fit_sparse(work: Path, size: int, sparse: int, data: int) -> tuple[int, int, str | None]:
    """Scale the sparse image (its data, and its size alike) down to what the
    work dir can hold: the dense-data image, the sparse image's data, and one
    destination at a time.  Returns (sparse, data, note)."""
    free = shutil.disk_usage(work).free

    def need(d: int) -> int:
        return (d if d != size else 0) + d + max(size, d) + MARGIN

    if need(data) <= free:
        return sparse, data, None
    fit = (free - size - MARGIN) // 2 // (EXTENTS * MiB) * (EXTENTS * MiB)
    if fit < EXTENTS * MiB:
        raise BenchError(f"{work} has {free // MiB} MiB free: no room for the sparse image")
    scaled = sparse * fit // data // MiB * MiB
    note = (f"{work} has {free // MiB} MiB free: sparse image scaled down from "
            f"{sparse // MiB} MiB holding {data // MiB} MiB to {scaled // MiB} MiB "
            f"holding {fit // MiB} MiB")
    log(note)
    return scaled, fit, note


def shm_fits(size: int, data: int) -> tuple[bool, str | None]:
    """Whether /dev/shm holds the copy-shm rows' images beside the
    workspace's: `dense` (a copy), dense-data and the sparse data are new."""
    need = size + (data if data != size else 0) + data + MARGIN
    free = shutil.disk_usage(SHM).free
    if need <= free:
        return True, None
    note = (f"{SHM} has {free // MiB} MiB free, {need // MiB} MiB needed: "
            "no copy-shm rows")
    log(note)
    return False, note


def make_rows(size: int, sparse: int, data: int, shm: bool) -> list[CopyRow]:
    dense, dense_data = f"{size // MiB} MiB dense", f"{data // MiB} MiB dense"
    sparse_what = f"{sparse // MiB} MiB, {data // MiB} MiB data"
    rows = [CopyRow(DD_COPY, "dense", dense, size),
            CopyRow(DD_WRITE_READING, "dense", dense, size),
            CopyRow(UPLOAD, "dense", dense, size)]
    for where, names in [("shm", (SHM_COPY, SHM_COPY_DATA, SHM_COPY_SPARSE)),
                         ("disk", (COPY, COPY_DATA, COPY_SPARSE))]:
        if where == "shm" and not shm:
            continue
        rows += [CopyRow(names[0], "dense", dense, size, where),
                 CopyRow(names[1], "dense-data", dense_data, data, where),
                 CopyRow(names[2], "sparse", sparse_what, data, where)]
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    size, notes = args.size * MiB, []
    start = time.monotonic()
    try:
        with workspace(args.work, size) as ws:
            sparse, data, note = fit_sparse(ws.root, size, args.sparse * MiB, args.data * MiB)
            notes += [note] if note else []
            log(f"work dir {ws.root}: dense {size // MiB} MiB, sparse {sparse // MiB} MiB "
                f"holding {data // MiB} MiB in {EXTENTS} extents, {args.rounds} round(s)")
            shm, note = shm_fits(size, data)
            notes += [note] if note else []
            rows = make_rows(size, sparse, data, shm)
            with ExitStack() as stack:
                log("starting the source and destination daemons")
                hosts = {"disk": stack.enter_context(host(ws, "sluice-src"))}
                dst = stack.enter_context(host(ws, "sluice-dst"))
                if shm:
                    hosts["shm"] = stack.enter_context(shm_host(ws, "sluice-src-shm"))
                log("making the source images and their checksums")
                images = {where: make_images(ws, src, data, sparse, EXTENTS,
                                             ws.source if where == "disk" else ws.image)
                          for where, src in hosts.items()}
                for i in range(args.rounds):
                    for row in rows:
                        if row.error is None:
                            run_round(row, hosts[row.source], dst,
                                      images[row.source][row.image], ws, i, args.rounds)
            facts = machine_facts(ws.root)
            keep_logs(ws.root, args.out / "copy-logs", any(row.error for row in rows))
    except (BenchError, OSError) as e:
        log(f"FAILED: {e}")
        return 2
    except KeyboardInterrupt:
        log("interrupted; daemons stopped, work dir removed")
        return 130
    sizes = {"dense_bytes": size, "sparse_bytes": sparse, "sparse_data_bytes": data,
             "sparse_extents": EXTENTS}
    results = results_json(facts, sizes, args.rounds, args.quick, rows,
                           time.monotonic() - start, notes)
    print(write(args.out, results), end="")
    log(f"wrote {args.out / 'copy-results.json'} and copy-summary.txt")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
