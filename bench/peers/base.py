"""What every peer offers the runner, and the ticket API imageio and Sluice share."""

from __future__ import annotations

import http.client
import json
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .. import BenchError
from ..procs import Proc
from ..tls import TLSFiles
from ..workspace import Workspace, copy_durable, drop_cached, remove


@dataclass
class Target:
    """One transfer's end on the server: the URL and the file behind it."""

    url: str
    path: Path
    cleanup: Callable[[], None] = field(default=lambda: None)


class Server(Protocol):
    """A running peer on one transport."""

    proc: Proc

    def upload_target(self) -> Target:
        """A fresh, empty destination for one upload of the image."""
        ...

    def download_target(self) -> Target:
        """A URL serving the workspace's on-disk copy of the image."""
        ...


def scheme(tls: TLSFiles | None) -> str:
    return "https" if tls is not None else "http"


def new_file(path: Path, size: int) -> None:
    """A new sparse file of size bytes: tickets name an existing file."""
    remove(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


def link_source(ws: Workspace, path: Path, *, copy: bool = False) -> None:
    """Serve the on-disk image copy at path: a hard link (same filesystem),
    or with ``copy`` a copy, out of the page cache as the source is (Sluice
    refuses a volume with more than one link: one could lead out of its
    domain)."""
    remove(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        copy_durable(ws.source, path)
        drop_cached(path)
    else:
        os.link(ws.source, path)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=30)
        self.path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def control(sock: Path, method: str, path: str, body: dict[str, Any] | None = None,
            timeout: float | None = None) -> Any:
    """One request to an imageio-style control API (see :func:`exchange`)."""
    conn = UnixHTTPConnection(sock)
    if timeout is not None:
        conn.timeout = timeout
    return exchange(conn, method, path, body, f"control {method} {path}")


def exchange(conn: http.client.HTTPConnection, method: str, path: str,
             body: dict[str, Any] | None, what: str) -> Any:
    """One request on ``conn``, closed after: its JSON answer, None when the
    body is empty; BenchError, naming ``what``, unless it is 2xx."""
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode(errors="replace")
    except OSError as e:
        raise BenchError(f"{what}: {e}") from e
    finally:
        conn.close()
    if not 200 <= resp.status < 300:
        raise BenchError(f"{what}: {resp.status} {text.strip()[:500]}")
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:  # imageio answers some calls with plain text
        return text


class TicketServer:
    """A peer driven by tickets: ovirt-imageio, or Sluice with the same API.

    Each transfer gets its own ticket and a file in storage; both go when
    the transfer's target is cleaned up.
    """

    def __init__(self, proc: Proc, base_url: str, control_socket: Path, storage: Path,
                 ws: Workspace, *, single_links: bool = False) -> None:
        self.proc = proc
        self.base_url = base_url
        self.control_socket = control_socket
        self.storage = storage
        self.ws = ws
        #: Images get a copy of the source, not a hard link (Sluice).
        self.single_links = single_links

    def _ticket(self, path: Path, ops: list[str]) -> Target:
        ticket = str(uuid.uuid4())
        control(self.control_socket, "PUT", f"/tickets/{ticket}", {
            "uuid": ticket, "size": self.ws.size, "url": f"file://{path}",
            "ops": ops, "timeout": 3600, "inactivity_timeout": 3600,
        })

        def cleanup() -> None:
            control(self.control_socket, "DELETE", f"/tickets/{ticket}")

        return Target(url=f"{self.base_url}/images/{ticket}", path=path, cleanup=cleanup)

    def upload_target(self) -> Target:
        path = self.storage / f"upload-{uuid.uuid4().hex[:8]}.img"
        new_file(path, self.ws.size)
        target = self._ticket(path, ["read", "write"])
        drop_ticket = target.cleanup

        def cleanup() -> None:
            try:
                drop_ticket()
            finally:
                remove(path)

        target.cleanup = cleanup
        return target

    def download_target(self) -> Target:
        path = self.storage / "download.img"
        if not path.exists():
            link_source(self.ws, path, copy=self.single_links)
        return self._ticket(path, ["read"])
