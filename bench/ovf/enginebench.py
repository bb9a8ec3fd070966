"""Issue "Engine side": one `sluice-engine ovf update --once` pass over N VMs
with 20 KiB OVFs on 4 file domains of one local daemon.

Each round of each size gets a fresh engine cache (filled in this process
through the cache API, as `vm import` would) and 4 new domains (an engine
never replaces a store it did not write), and the pass runs in a child process:
its wall time and its peak RSS (its VmHWM, see measure.wait_child) are the
figures, kept only once every domain's store checks out.
The engine uses its default config (zstd when the host lists it, 4 domains
at once).  Then every domain's committed store is read back (GET
/domains/{sd}/ovf-store, checked against the cache and the daemon's record)
into one file, which is uploaded through the image path with curl: the
same bytes, the same daemon.  The report takes the median of the rounds
(one pass and one upload of 211 MB vary by a third from run to run).
"""

from __future__ import annotations

import http.client
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from engine_client.cache import Cache
from engine_client.entities import ImportItem
from engine_client.ovf import parse

from .. import MB, BenchError, MiB, log
from ..procs import Proc
from ..runner import round_failed
from ..workspace import SHM, remove, settled
from . import OVF_SIZE, ovfgen
from .daemon import Daemon
from .measure import ChildResult, MemRow, Metered, Reading, check_image, image_put, wait_child

DOMAINS = 4
IMPORT_BATCH = 500
#: A pass is stopped (and the row fails) after this long.
PASS_TIMEOUT = 900.0


def engine_command() -> list[str]:
    exe = Path(sys.executable).parent / "sluice-engine"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "engine_client"]


def fill_cache(state: Path, d: Daemon, count: int, domains: list[str]) -> None:
    """A new engine cache: ``domains`` and the daemon as their host, ``count`` VMs."""
    pool = d.call("GET", "/pool")["domains"]
    with Cache.open(str(state)) as cache:
        for sd in domains:
            cache.add_domain(sd, "file", [pool[sd]["location"]])
        cache.add_host("h1", d.url, d.token, domains)
        vms = ovfgen.specs(count, domains, OVF_SIZE, f"engine-{count}")
        for i in range(0, count, IMPORT_BATCH):
            items = []
            for spec in vms[i:i + IMPORT_BATCH]:
                data = ovfgen.ovf(spec)
                items.append(ImportItem(f"{spec.vm}.ovf", parse(data), data))
            cache.import_entities(items)


@dataclass(frozen=True)
class Pass:
    """One engine pass as it ended, before its stores are checked."""

    child: ChildResult
    #: The daemon's figures over the pass.
    daemon: Reading
    #: The pass's own duration, as the engine logs it.
    seconds: float

    def record(self, row: MemRow) -> None:
        self.daemon.record(row)
        if self.child.max_rss:
            row.client_rss.append(self.child.max_rss)
        row.extra.setdefault("rounds_pass_seconds", []).append(self.seconds)


def run_pass(state: Path, work: Path, d: Daemon) -> Pass:
    argv = [*engine_command(), "--state-dir", str(state), "ovf", "update", "--once"]
    metered = Metered(d.proc)
    start = time.monotonic()
    proc = Proc("sluice-engine", argv, work / "engine" / f"{state.name}.log")
    done = wait_child(proc, start, PASS_TIMEOUT)
    reading = metered.done(done.seconds)
    if done.status != 0:
        raise BenchError(f"sluice-engine ovf update --once exited with {done.status}:\n"
                         f"{proc.log_tail()}")
    found = re.search(r"pass took ([0-9.]+) s", proc.log.read_text(errors="replace"))
    if found is None:
        raise BenchError(f"sluice-engine logged no pass duration:\n{proc.log_tail()}")
    return Pass(done, reading, float(found.group(1)))


def fetch_stores(state: Path, d: Daemon, dest: Path, domains: list[str]
                 ) -> tuple[int, str, dict[str, Any]]:
    """Check every domain's store against the cache and the daemon's record,
    and append its tar to ``dest``; (total bytes, their xxh3-128, per domain)."""
    whole = xxhash.xxh3_128()
    found: dict[str, Any] = {}
    host, port = d.url.removeprefix("http://").rsplit(":", 1)
    with Cache.open(str(state)) as cache, open(dest, "wb") as out:
        for sd in domains:
            st = cache.store(sd)
            record = d.newest_store(sd)
            if st.outdated or record is None or (st.generation, st.digest, st.tar_length) != (
                    record["generation"], record["digest"], record["tar_length"]):
                raise BenchError(f"domain {sd}: the engine cache has generation "
                                 f"{st.generation} digest {st.digest} (outdated: "
                                 f"{st.outdated}), the daemon {record}")
            conn = http.client.HTTPConnection(host, int(port), timeout=120)
            conn.request("GET", f"/domains/{sd}/ovf-store",
                         headers={"Authorization": f"Bearer {d.token}"})
            resp = conn.getresponse()
            h, n = xxhash.xxh3_128(), 0
            while chunk := resp.read(1 << 20):
                h.update(chunk)
                whole.update(chunk)
                out.write(chunk)
                n += len(chunk)
            conn.close()
            if (resp.status, n, h.hexdigest()) != (200, st.tar_length, st.digest):
                raise BenchError(f"GET /domains/{sd}/ovf-store: {resp.status}, {n} bytes, "
                                 f"xxh3 {h.hexdigest()}; committed {st.tar_length} bytes, "
                                 f"{st.digest}")
            found[sd] = {"vms": len(st.stored), "generation": st.generation, "tar_bytes": n}
    return sum(v["tar_bytes"] for v in found.values()), whole.hexdigest(), found


def run_round(d: Daemon, work: Path, count: int, i: int, engine: MemRow,
              image: MemRow) -> None:
    """Round ``i`` over ``count`` VMs: a fresh cache and fresh domains, the
    pass, its stores checked, then the image upload of the same bytes."""
    state = work / f"engine-{count}-{i}"
    tar = SHM / f"{work.name}-engine-{count}.tar"
    try:
        start = time.monotonic()
        domains = d.new_domains(work / f"domains-{count}-{i}", DOMAINS)
        fill_cache(state, d, count, domains)
        log(f"engine: cache of {count} VMs on {DOMAINS} domains filled in "
            f"{time.monotonic() - start:.1f} s")
        with settled():
            done = run_pass(state, work, d)
        size, digest, per_domain = fetch_stores(state, d, tar, domains)
        done.record(engine)  # only a pass whose stores check out counts
        engine.size = image.size = size
        engine.verified = True
        engine.extra.update({"vms": count, "domains": per_domain})
        engine.extra.setdefault("rounds_engine_cpu_s", []).append(done.child.cpu_s)
        log(f"{engine.name} round {i + 1}: {done.child.seconds:.2f} s for {size / MB:.1f} MB, "
            f"engine peak RSS {done.child.max_rss / MiB:.1f} MiB, daemon RSS "
            f"+{engine.rss_growth[-1] / MiB:.1f} MiB")
        with settled(), d.image_ticket(size) as (url, path):
            metered = Metered(d.proc)
            reading = metered.done(image_put(tar, url, size))
            check_image(path, size, digest)
        reading.record(image)
        image.verified = True
        log(f"{image.name} round {i + 1}: {reading.seconds:.2f} s, "
            f"{size / reading.seconds / MB:.1f} MB/s")
    finally:
        remove(tar)  # also on Ctrl-C: it is in /dev/shm
        shutil.rmtree(state, ignore_errors=True)  # the next round's gets the page cache


def run_size(d: Daemon, work: Path, count: int, rounds: int) -> tuple[MemRow, MemRow]:
    """``rounds`` passes over ``count`` VMs and the image uploads of their
    bytes; a failed round ends both rows (its error on both)."""
    engine = MemRow("engine", f"ovf-pass-{count}vm", "http", "sluice-engine")
    image = MemRow("sluice", f"upload-{count}vm", "http", "curl")
    for i in range(rounds):
        try:
            run_round(d, work, count, i, engine, image)
        except Exception as e:
            if len(engine.seconds) > i:  # the pass counted; its image upload failed
                round_failed(image, i, e)
            else:
                round_failed(engine, i, e)
                image.error = engine.error
            break
    passes = engine.extra.get("rounds_pass_seconds")
    if passes:
        engine.extra["pass_seconds"] = statistics.median(passes)
    return engine, image


def run(d: Daemon, work: Path, sizes: tuple[int, int], rounds: int
        ) -> tuple[list[MemRow], dict[str, Any]]:
    (work / "engine").mkdir()
    rows: list[MemRow] = []
    for count in sizes:
        rows += run_size(d, work, count, rounds)
    return rows, {"domains": DOMAINS, "vms": list(sizes), "ovf_size": OVF_SIZE,
                  "rounds": rounds}
