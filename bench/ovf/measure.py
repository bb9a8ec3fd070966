"""What both OVF benches measure with: a metered curl PUT, the daemon's RSS
before and its peak during, and a child's wall time, CPU and peak RSS."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import BenchError
from ..clients import _curl, curl_upload
from ..procs import Meter, Proc, Usage, peak_rss, status_kib, tree
from ..report import Row
from ..workspace import file_digest


@dataclass
class MemRow(Row):
    """A row of the OVF bench: the image bench's, plus the bytes it moves
    and memory figures (bytes, per round)."""

    size: int = 0
    #: The daemon's VmRSS just before each round, and its peak minus that.
    base_rss: list[int] = field(default_factory=list)
    rss_growth: list[int] = field(default_factory=list)
    #: Rows run by a child process (the engine): its peak RSS (VmHWM, see wait_child).
    client_rss: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def current_rss(pids: list[int]) -> int:
    """Sum of VmRSS over these processes, in bytes."""
    return status_kib(pids, "VmRSS")


@dataclass(frozen=True)
class Reading:
    """One transfer's figures, taken as it ends.  They go into its row only
    once the transfer's bytes are checked: a failed round leaves no figure."""

    seconds: float
    usage: Usage
    base: int

    def record(self, row: MemRow) -> None:
        row.seconds.append(self.seconds)
        row.cpu_s.append(self.usage.cpu_s)
        self.record_memory(row)

    def record_memory(self, row: MemRow) -> None:
        """The memory figures only (a warm-up: its time is not the steady
        state's, its memory is the cold daemon's, the worst case)."""
        row.peak_rss = max(row.peak_rss, self.usage.peak_rss)
        row.base_rss.append(self.base)
        row.rss_growth.append(self.usage.peak_rss - self.base)


class Metered:
    """Meter a daemon over one transfer: CPU, peak RSS, and RSS before it."""

    def __init__(self, proc: Proc) -> None:
        self.meter = Meter(proc)  # resets VmHWM to the current RSS
        self.base = current_rss(tree(proc.pid))

    def done(self, seconds: float) -> Reading:
        """Stop metering, right after the transfer took ``seconds``."""
        return Reading(seconds, self.meter.done(), self.base)


def put_json(src: Path, url: str, size: int, header_file: Path, answer: Path
             ) -> tuple[float, Any]:
    """curl -T with the engine's credential (-H @file); (seconds, JSON answer)."""
    seconds = _curl(["-o", str(answer), "-H", f"@{header_file}", "-T", str(src), url],
                    size, "size_upload", None)
    try:
        return seconds, json.loads(answer.read_text())
    finally:
        answer.unlink()


def image_put(src: Path, url: str, size: int) -> float:
    """The image path: the bench's own `curl -T FILE`."""
    return curl_upload(src, url, size, None)


def check_image(path: Path, size: int, digest: str) -> None:
    got_size, got = file_digest(path)
    if (got_size, got) != (size, digest):
        raise BenchError(f"the image holds {got_size} bytes with xxh3 {got}, "
                         f"sent {size} bytes with {digest}")


@dataclass
class ChildResult:
    seconds: float
    status: int
    max_rss: int  # bytes
    cpu_s: float


def wait_child(proc: Proc, start: float, timeout: float) -> ChildResult:
    """Wait for a child started at ``start`` (monotonic); its wall time, exit
    code, peak RSS and CPU (wait4).  Polls every 10 ms so that a hung child
    is stopped at ``timeout``; the child is stopped on Ctrl-C too (it has
    its own session, so the terminal's SIGINT never reaches it).

    The peak RSS is the child's own VmHWM, read at every poll; one reached
    in its last 10 ms is missed.  wait4's ru_maxrss cannot serve: Linux
    carries the RSS a process had when it was forked into its maxrss across
    exec (exec_mmap, setmax_mm_hiwater_rss), so a child of the bench would
    report at least the bench's own RSS at that time, which grows with the
    engine cache the bench just filled.
    """
    peak = 0
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                seconds = time.monotonic() - start
                code = os.waitstatus_to_exitcode(status)
                proc.popen.returncode = code  # reaped here, not by Popen
                return ChildResult(seconds, code, peak, usage.ru_utime + usage.ru_stime)
            peak = max(peak, peak_rss([proc.pid]))
            if time.monotonic() - start > timeout:
                raise BenchError(f"{proc.name} still running after {timeout:.0f} s:\n"
                                 f"{proc.log_tail()}")
            time.sleep(0.01)
    except BaseException:
        proc.stop()
        raise
