"""A `sluice serve` for the OVF benches: big enough stores, extra domains,
the engine token, and image tickets to compare with.

The daemon is started like the image bench's (bench/peers/sluice.py), but
with a TOML config: the default domain's OVF stores must hold a tar of
10,000 OVFs of 20 KiB (about 212 MB), more than the 128 MiB default.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import MiB
from ..peers.base import control, new_file
from ..peers.sluice import REPO, daemon_command, default_domain
from ..procs import Proc, tcp_ready, unix_ready
from ..workspace import free_port, remove

#: Store size of the default domain: the full store bench's 212 MB tar fits.
STORE_SIZE = 256 * MiB
#: Store size of the engine bench's domains (the daemon's default): a quarter
#: of 10,000 OVFs is 53 MB.
ENGINE_STORE_SIZE = 128 * MiB


@dataclass
class Daemon:
    proc: Proc
    url: str
    sock: Path
    token: str
    #: The default domain: its UUID and directory.
    sd: str
    sd_dir: Path

    def auth_header(self) -> str:
        return f"Authorization: Bearer {self.token}"

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """A control-socket request; its JSON answer (BenchError unless 2xx)."""
        return control(self.sock, method, path, body)

    def newest_store(self, sd: str) -> dict[str, Any] | None:
        """The record of the newest valid store of ``sd`` (GET .../ovf-store/info)."""
        states = self.call("GET", f"/domains/{sd}/ovf-store/info")["stores"]
        records = [s["record"] for s in states if s["valid"]]
        return max(records, key=lambda r: r["generation"], default=None)

    def new_domains(self, root: Path, count: int) -> list[str]:
        """Format ``count`` new file domains under ``root`` and put them in the
        pool map, Active; their UUIDs.  New ones for each engine cache: an
        engine never overwrites a store it did not write (or import)."""
        pool = self.call("GET", "/pool")
        domains = dict(pool["domains"])
        made = []
        for i in range(count):
            sd = str(uuid.uuid4())
            where = root / f"domain-{i}"
            where.mkdir(parents=True)
            self.call("POST", "/domains", {"uuid": sd, "type": "file", "location": str(where),
                                           "ovf_store_size": ENGINE_STORE_SIZE})
            domains[sd] = {"type": "file", "location": str(where), "status": "Active"}
            made.append(sd)
        self.call("PUT", "/pool", {"pool_id": pool["pool_id"],
                                   "map_version": pool["map_version"] + 1,
                                   "master_domain": self.sd, "domains": domains})
        return made

    @contextmanager
    def image_ticket(self, size: int) -> Iterator[tuple[str, Path]]:
        """(upload URL, file) of a new image of ``size`` bytes in the default domain."""
        path = self.sd_dir / "images" / "bench" / f"ovf-{uuid.uuid4().hex[:8]}.img"
        new_file(path, size)
        ticket = str(uuid.uuid4())
        try:
            control(self.sock, "PUT", f"/tickets/{ticket}", {
                "uuid": ticket, "size": size, "url": f"file://{path}",
                "ops": ["read", "write"], "timeout": 3600, "inactivity_timeout": 3600})
            try:
                yield f"{self.url}/images/{ticket}", path
            finally:
                control(self.sock, "DELETE", f"/tickets/{ticket}")
        finally:
            remove(path)


@contextmanager
def serve(home: Path) -> Iterator[Daemon]:
    """`sluice serve` with its data dir under ``home``; stopped on exit."""
    data_dir = home / "data"
    data_dir.mkdir(parents=True)
    config = home / "sluice.toml"
    config.write_text(f"[ovf]\nstore_size = {STORE_SIZE}\n")
    port = free_port()
    sock = data_dir / "control.sock"
    argv = [*daemon_command(), "--config", str(config), "--data-dir", str(data_dir),
            "--listen", f"127.0.0.1:{port}", "--control-socket", str(sock),
            "--log-level", "INFO"]
    proc = Proc("sluice", argv, home / "daemon.log", cwd=REPO)
    try:
        proc.wait_ready(tcp_ready(port))
        proc.wait_ready(unix_ready(sock))
        sd_dir = default_domain(data_dir)
        token = (data_dir / "engine.token").read_text().strip()
        yield Daemon(proc, f"http://127.0.0.1:{port}", sock, token, sd_dir.name, sd_dir)
    finally:
        proc.stop()
