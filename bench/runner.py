"""Measure rows: N rounds each, fresh targets per round, server CPU and RSS.

All peers start first and stay up; then each round runs every row once, so
the rounds of one row are spread over the run and each round compares all
peers under the same load (the machines are shared and noisy).  A failing
row records its error and skips its later rounds; a peer that does not
start fails all its rows.  Only KeyboardInterrupt and SystemExit cut a run
short, and the caller's ExitStack still takes the peers down.
"""

from __future__ import annotations

import fnmatch
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

from . import MB, BenchError, log
from .clients import DISCARDING, DOWNLOADERS, UPLOADERS
from .peers import Peer, Server
from .procs import Meter, Proc
from .report import Row
from .tls import TLSFiles
from .workspace import Workspace, drop_cached, file_digest, remove, settled


@dataclass
class Trial:
    """One round: run() moves the image and returns its seconds."""

    run: Callable[[], float]
    #: The file that must now hold the image, or None if nothing to check.
    result: Path | None
    cleanup: list[Callable[[], None]] = field(default_factory=list)


@dataclass
class Job:
    """A row and how to make one of its rounds."""

    row: Row
    #: The server whose CPU and memory count, or None (dd).
    proc: Proc | None
    prepare: Callable[[], Trial]


class Mismatch(BenchError):
    """The server stored or sent other bytes than the source image."""


def verify(path: Path, ws: Workspace) -> None:
    size, digest = file_digest(path)
    if size != ws.size:
        raise Mismatch(f"{path.name} holds {size} bytes, expected {ws.size}")
    if digest != ws.digest:
        raise Mismatch(f"{path.name}: content differs from the source image")


def finish(trial: Trial) -> None:
    """Run the trial's cleanups; the memory they free settles before the next."""
    with settled(), ExitStack() as stack:
        for fn in trial.cleanup:
            stack.callback(fn)


class FailingRow(Protocol):
    @property
    def name(self) -> str: ...

    error: str | None
    verified: bool | None


def describe(e: Exception) -> str:
    """An error for the report: the bench's own as they are, others with their type."""
    return str(e) if isinstance(e, BenchError) else f"{type(e).__name__}: {e}"


def round_failed(row: FailingRow, i: int, e: Exception) -> None:
    """Record a round's failure on its row (a failed row must not stop the
    others)."""
    row.error = f"round {i + 1}: {describe(e)}"
    if isinstance(e, Mismatch):
        row.verified = False
    log(f"{row.name}: ERROR {row.error}")


def run_round(job: Job, ws: Workspace, i: int, rounds: int) -> None:
    row = job.row
    try:
        with settled():  # evicting the served file frees its cached pages
            trial = job.prepare()
        try:
            meter = Meter(job.proc)
            seconds = trial.run()
            usage = meter.done()
            if i == 0 and trial.result is not None:
                verify(trial.result, ws)
                row.verified = True
        finally:
            finish(trial)
    except Exception as e:
        round_failed(row, i, e)
        return
    row.seconds.append(seconds)
    row.cpu_s.append(usage.cpu_s)
    row.peak_rss = max(row.peak_rss, usage.peak_rss)
    log(f"{row.name} round {i + 1}/{rounds}: {ws.size / seconds / MB:.1f} MB/s, "
        f"server cpu {usage.cpu_s:.2f} s")


def run_jobs(jobs: list[Job], ws: Workspace, rounds: int) -> None:
    for i in range(rounds):
        for job in jobs:
            if job.row.error is None:
                run_round(job, ws, i, rounds)


def upload_trial(server: Server, ws: Workspace, client: str, ca: Path | None) -> Trial:
    target = server.upload_target()
    send = UPLOADERS[client]
    return Trial(run=lambda: send(ws.image, target.url, ws.size, ca), result=target.path,
                 cleanup=[target.cleanup])


def download_trial(server: Server, ws: Workspace, client: str, ca: Path | None) -> Trial:
    target = server.download_target()
    drop_cached(target.path)  # every peer reads the image from the disk
    dest = ws.root / f"downloaded-{uuid.uuid4().hex[:8]}.img"
    fetch = DOWNLOADERS[client]
    return Trial(run=lambda: fetch(dest, target.url, ws.size, ca),
                 result=None if client in DISCARDING else dest,
                 cleanup=[target.cleanup, lambda: remove(dest)])


def selector(patterns: list[str]) -> Callable[[str], bool]:
    """--only: a peer name ("sluice"), a row name or a glob ("*/upload/tls/*")."""
    def selected(name: str) -> bool:
        peer = name.split("/", 1)[0]
        return not patterns or any(p == peer or fnmatch.fnmatchcase(name, p) for p in patterns)
    return selected


def start_peer(stack: ExitStack, peer: Peer, ws: Workspace, tls: TLSFiles,
              selected: Callable[[str], bool]) -> tuple[list[Row], list[Job]]:
    """Start the peer on each transport that has selected rows (stopped when
    stack closes); return its rows and the jobs of those that started."""
    rows: list[Row] = []
    jobs: list[Job] = []
    for transport in ("http", "tls"):
        wanted = [Row(peer.name, direction, transport, client)
                  for direction, clients in (("upload", peer.upload_clients),
                                             ("download", peer.download_clients))
                  for client in clients]
        wanted = [row for row in wanted if selected(row.name)]
        if not wanted:
            continue
        rows += wanted
        log(f"starting {peer.name} ({transport})")
        try:
            server = stack.enter_context(peer.serve(ws, tls if transport == "tls" else None))
        except Exception as e:  # the peer did not start
            for row in wanted:
                row.error = f"{peer.name} ({transport}): {e}"
            log(f"{peer.name} ({transport}): ERROR {e}")
            continue
        ca = tls.ca if transport == "tls" else None
        for row in wanted:
            make = upload_trial if row.direction == "upload" else download_trial
            jobs.append(Job(row, server.proc, partial(make, server, ws, row.client, ca)))
    return rows, jobs
