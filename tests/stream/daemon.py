"""A real ``sluice serve`` in a subprocess, for end-to-end tests."""

from __future__ import annotations

import glob
import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX)
        s.connect(self._path)
        self.sock = s


class Daemon:
    def __init__(self, data_dir: Path, tls: tuple[str, str] | None = None,
                 args: list[str] | None = None, nofile: int | None = None) -> None:
        """``nofile``: the soft open files limit the daemon starts with."""
        self.data_dir = data_dir
        self.port = free_port()
        self.scheme = "https" if tls else "http"
        cmd = [sys.executable, "-m", "stream", "serve", "--data-dir", str(data_dir),
               "--listen", f"127.0.0.1:{self.port}", "--log-level", "DEBUG"]
        if tls:
            cmd += ["--cert", tls[0], "--key", tls[1]]
        cmd += args or []
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(data_dir.parent / f"daemon-{self.port}.log", "wb")  # noqa: SIM115
        def limit() -> None:
            if nofile is not None:
                _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=limit if nofile is not None else None)
        self.control = str(data_dir / "control.sock")
        deadline = time.monotonic() + 20
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                output = self.read_log()
                self.stop()
                raise RuntimeError(f"sluice serve did not start: {output}")
            time.sleep(0.05)
        (self.domain,) = glob.glob(str(data_dir / "domains" / "*" / ""))
        self.images = Path(self.domain) / "images"
        self.images.mkdir(exist_ok=True)

    def _ready(self) -> bool:
        if not os.path.exists(self.control):
            return False
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        conn = UnixHTTPConnection(self.control)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def add_ticket(self, path: Path, size: int | None = None, **fields: Any) -> str:
        ticket = {"uuid": str(uuid.uuid4()), "url": f"file://{path}",
                  "size": size if size is not None else os.path.getsize(path),
                  "ops": ["read", "write"], "timeout": 300}
        ticket.update(fields)
        status, body = self.request("PUT", f"/tickets/{ticket['uuid']}", ticket)
        assert status == 200, body
        return f"{self.scheme}://127.0.0.1:{self.port}/images/{ticket['uuid']}"

    @property
    def token(self) -> str:
        """The engine credential the daemon generated at first start."""
        return (self.data_dir / "engine.token").read_text().strip()

    def read_log(self) -> str:
        self.log.flush()
        return (self.data_dir.parent / f"daemon-{self.port}.log").read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, as in a crash."""
        self.proc.kill()
        self.proc.wait()
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def make_cert(directory: Path) -> tuple[str, str]:
    cert, key = str(directory / "server.pem"), str(directory / "server.key")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )
    return cert, key
