"""Two Sluice daemons for the host-to-host copy bench, and their engine API.

Each daemon is `sluice serve` with its own data dir (bench.peers.sluice),
hence its own embedded default storage domain, Active in its standalone
pool.  The engine routes are reached over the daemon's control socket,
which needs no token.  Destination images are volumes made through the
domain API; source images are files in the source's domain, read through
a `file://` ticket, as an engine would hand another host's image URL.
"""

from __future__ import annotations

import http.client
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import MB, BenchError
from .peers.base import control, exchange
from .peers.sluice import serve
from .procs import Proc
from .workspace import SHM, Workspace

#: Job states that mean "not finished yet" (stream/jobs.py).
ACTIVE = ("pending", "running", "verifying")
POLL = 0.05
#: A copy is given up only if it runs slower than 10 MB/s.
MIN_RATE = 10 * MB


def api(sock: Path, method: str, path: str, body: dict[str, Any] | None = None,
        timeout: float = 60.0) -> Any:
    """One engine-API request over a control socket (see peers.base.control)."""
    return control(sock, method, path, body, timeout)


@dataclass
class Volume:
    """A destination volume: its reference for tickets and jobs, and its file."""

    ref: dict[str, str]
    size: int
    #: The file holding exactly the volume's bytes, or None (a region).
    path: Path | None


@dataclass
class Host:
    name: str
    proc: Proc
    base_url: str
    sock: Path
    sd_id: str
    #: A directory inside the storage domain for source image files.
    images: Path

    def ticket(self, size: int, ops: list[str], *, path: Path | None = None,
               volume: Volume | None = None) -> str:
        """A ticket for a file in the domain or for a volume; returns its id."""
        ticket = str(uuid.uuid4())
        where: dict[str, Any] = {"url": f"file://{path}"} if path is not None \
            else dict(volume.ref) if volume is not None else {}
        api(self.sock, "PUT", f"/tickets/{ticket}", {
            "uuid": ticket, "size": size, "ops": ops, "timeout": 3600,
            "inactivity_timeout": 3600, **where})
        return ticket

    def url(self, ticket: str) -> str:
        return f"{self.base_url}/images/{ticket}"

    def drop_ticket(self, ticket: str) -> None:
        api(self.sock, "DELETE", f"/tickets/{ticket}")

    def checksum(self, ticket: str, size: int) -> str:
        """The daemon's own xxh3-128 block hash of a ticket's image, asked
        on the data port as any imageio client asks for it."""
        url = urlsplit(self.base_url)
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port,
                                          timeout=120 + size / MIN_RATE)
        answer = exchange(conn, "GET", f"/images/{ticket}/checksum?algorithm=xxh3_128", None,
                          f"{self.name}: checksum")
        return str(answer["checksum"])

    def new_volume(self, size: int) -> Volume:
        img, vol = str(uuid.uuid4()), str(uuid.uuid4())
        info = api(self.sock, "POST", f"/domains/{self.sd_id}/volumes", {
            "img_id": img, "vol_id": vol, "size": size, "format": "raw",
            "allocation": "sparse"})
        whole = info.get("length") is None and not info.get("offset")
        return Volume({"sd_id": self.sd_id, "img_id": img, "vol_id": vol}, size,
                      Path(info["path"]) if whole else None)

    def delete_volume(self, volume: Volume) -> None:
        r = volume.ref
        api(self.sock, "DELETE", f"/domains/{r['sd_id']}/images/{r['img_id']}/volumes/"
                                 f"{r['vol_id']}")

    def copy(self, source_url: str, dest: Volume, data_bytes: int) -> Job:
        """Run a copy job into dest and wait for it; the job as it ended."""
        start = time.monotonic()
        job = api(self.sock, "POST", "/jobs/copy", {
            "source": {"url": source_url}, "destination": dest.ref})
        deadline = start + 120 + data_bytes / MIN_RATE
        verifying: float | None = None
        while job["state"] in ACTIVE:
            if time.monotonic() > deadline:
                api(self.sock, "DELETE", f"/jobs/{job['id']}")
                raise BenchError(f"copy job {job['id']} not done after "
                                 f"{deadline - start:.0f} s")
            time.sleep(POLL)
            job = api(self.sock, "GET", f"/jobs/{job['id']}")
            if verifying is None and job["state"] != "running":
                verifying = time.monotonic() - start
        wall = time.monotonic() - start
        if job["state"] != "done":
            raise BenchError(f"copy job {job['state']}: {job.get('error')}")
        return Job(job, wall, verifying)


@dataclass(frozen=True)
class Job:
    """A finished copy job: its JSON, the bench's wall time from POST to
    seeing it done, and when it was first seen verifying (poll-precise)."""

    body: dict[str, Any]
    wall: float
    verifying_seen: float | None

    @property
    def seconds(self) -> float:
        """The daemon's own start-to-done time, verification included."""
        return float(self.body["elapsed"])


@contextmanager
def host(ws: Workspace, name: str, data_parent: Path | None = None) -> Iterator[Host]:
    """Start one daemon named `name`; stopped when the block ends.  Its data
    dir (and storage domain) goes under `data_parent`, default its home."""
    with serve(ws, None, name, data_parent) as server:
        domain = server.storage.parent.parent
        images = server.storage
        images.mkdir(parents=True, exist_ok=True)
        yield Host(name, server.proc, server.base_url, server.control_socket,
                   domain.name, images)


@contextmanager
def shm_host(ws: Workspace, name: str) -> Iterator[Host]:
    """A daemon whose storage domain lives on /dev/shm (tmpfs): reading its
    images costs no disk I/O, as for the upload's source file.  The domain
    is removed when the block ends (and by reap_stale after a kill)."""
    parent = SHM / f"{ws.root.name}.src"
    parent.mkdir()
    try:
        with host(ws, name, parent) as h:
            yield h
    finally:
        shutil.rmtree(parent, ignore_errors=True)
