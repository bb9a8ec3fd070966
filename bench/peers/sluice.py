"""Sluice itself, as `sluice serve` with a data dir in the work dir.

Its control API is imageio's, so it shares TicketServer.  A ticket's file
must lie inside a storage domain: the embedded default domain is the one
directory under <data-dir>/domains/, made when the daemon starts.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .. import BenchError
from ..procs import Proc, tcp_ready, unix_ready
from ..tls import TLSFiles
from ..workspace import Workspace, free_port
from .base import TicketServer, scheme

UPLOAD_CLIENTS = ("curl", "curl-chunked", "imageio-client")
DOWNLOAD_CLIENTS = ("curl", "curl-null", "imageio-client")
REPO = Path(__file__).resolve().parents[2]


def daemon_command() -> list[str]:
    """The installed console script, else the package run from the checkout."""
    exe = Path(sys.executable).parent / "sluice"
    if exe.exists():
        return [str(exe), "serve"]
    return [sys.executable, "-m", "stream", "serve"]


def default_domain(data_dir: Path) -> Path:
    domains = sorted(p for p in (data_dir / "domains").glob("*/") if p.is_dir())
    if not domains:
        raise BenchError(f"sluice made no storage domain under {data_dir / 'domains'}")
    return domains[0]


@contextmanager
def serve(ws: Workspace, tls: TLSFiles | None, name: str = "",
          data_parent: Path | None = None) -> Iterator[TicketServer]:
    """One daemon; ``name`` (default sluice-http/-https) names its home dir
    and its process, so two daemons can run side by side (bench.copy).
    ``data_parent`` (default: the home dir) holds its data dir, hence its
    storage domain: bench.copy puts one on /dev/shm."""
    home = ws.root / (name or f"sluice-{scheme(tls)}")
    home.mkdir(parents=True)
    data_dir = (data_parent or home) / "data"
    data_dir.mkdir(parents=True)
    port = free_port()
    sock = data_dir / "control.sock"
    argv = [*daemon_command(), "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}",
            "--control-socket", str(sock), "--log-level", "INFO"]
    if tls is not None:
        argv += ["--cert", str(tls.cert), "--key", str(tls.key)]
    proc = Proc(name or "sluice", argv, home / "daemon.log", cwd=REPO)
    try:
        proc.wait_ready(tcp_ready(port))
        proc.wait_ready(unix_ready(sock))
        storage = default_domain(data_dir) / "images" / "bench"
        yield TicketServer(proc, f"{scheme(tls)}://127.0.0.1:{port}", sock, storage, ws,
                           single_links=True)
    finally:
        proc.stop()
