"""Peer processes: start them in their own process group, account for their
CPU and memory, and always tear them down.

A peer is started in a new session so a Ctrl-C in the terminal reaches the
bench only, which then stops each peer by its process group.  The kernel
also sends SIGTERM to a peer whose bench dies without cleaning up
(PR_SET_PDEATHSIG), so not even a SIGKILL of the bench leaves one behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import BenchError

PR_SET_PDEATHSIG = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Proc:
    """One peer process (and its children), output going to a log file."""

    def __init__(self, name: str, argv: Sequence[str], log: Path,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.log = log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, cwd=cwd, start_new_session=True, preexec_fn=_die_with_parent)
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, ready: Callable[[], bool], timeout: float = 30.0) -> None:
        """Poll ready() until true; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.alive():
                raise BenchError(f"{self.name} exited with {self.popen.returncode}:\n"
                                 f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} not ready after {timeout:.0f} s:\n"
                                 f"{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after grace."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(wait)
                if not _group_alive(self.pid):
                    return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def tree(pid: int) -> list[int]:
    """pid and all its descendants (nginx workers, helper processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of one process, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def reset_peak_rss(pids: Sequence[int]) -> None:
    """Restart VmHWM from the current RSS (Linux 4.0+, needs the owner or root)."""
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")


def status_kib(pids: Sequence[int], field: str) -> int:
    """Sum of a ``/proc/PID/status`` field given in kB (VmHWM, VmRSS), in bytes."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    total += int(line.split()[1]) * 1024
    return total


def peak_rss(pids: Sequence[int]) -> int:
    """Sum of VmHWM over these processes, in bytes."""
    return status_kib(pids, "VmHWM")


@dataclass
class Usage:
    """Server CPU and peak memory over one measured transfer."""

    cpu_s: float
    peak_rss: int


class Meter:
    """Samples a peer's process tree around one transfer.

    Processes that appear during the transfer count in full; one that exits
    during it loses its share (the peers here keep their processes).
    """

    def __init__(self, proc: Proc | None) -> None:
        self.root = proc.pid if proc is not None else None
        self.cpu0: dict[int, float] = {}
        if self.root is not None:
            pids = tree(self.root)
            reset_peak_rss(pids)
            for pid in pids:
                self.cpu0[pid] = cpu_seconds(pid) or 0.0

    def done(self) -> Usage:
        if self.root is None:
            return Usage(cpu_s=0.0, peak_rss=0)
        pids = tree(self.root)
        cpu = 0.0
        for pid in pids:
            now = cpu_seconds(pid)
            if now is not None:
                cpu += now - self.cpu0.get(pid, 0.0)
        return Usage(cpu_s=cpu, peak_rss=peak_rss(pids))


def tcp_ready(port: int) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True
    return ready


def unix_ready(path: Path) -> Callable[[], bool]:
    def ready() -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(path))
            except OSError:
                return False
        return True
    return ready
