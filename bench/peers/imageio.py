"""ovirt-imageio 2.5.1 (from PyPI, in the venv) as a peer: its daemon with a
file ticket, remote service on 127.0.0.1, control API on a unix socket.

Config keys are those of ovirt_imageio/_internal/config.py in 2.5.1.  Its
default log handler writes under /var/log and its default run dir is under
/run, so both are pointed into the work dir; the local (abstract unix
socket) service is off so the imageio client stays on TCP, like curl.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .. import BenchError
from ..procs import Proc, tcp_ready, unix_ready
from ..tls import TLSFiles
from ..workspace import Workspace, free_port
from .base import Server, TicketServer, scheme

UPLOAD_CLIENTS = ("curl", "imageio-client")
DOWNLOAD_CLIENTS = ("curl", "curl-null", "imageio-client")


def daemon_conf(home: Path, port: int, tls: TLSFiles | None) -> str:
    cert = f"""\
key_file = {tls.key}
cert_file = {tls.cert}
ca_file = {tls.ca}
""" if tls is not None else ""
    return f"""\
[daemon]
drop_privileges = false
systemd_enable = false
run_dir = {home}/run

[tls]
enable = {"true" if tls is not None else "false"}
{cert}
[remote]
host = 127.0.0.1
port = {port}

[local]
enable = false

[control]
transport = unix
socket = {home}/control.sock

[profile]
filename = {home}/run/profile

[handlers]
keys = stderr

[logger_root]
level = INFO
handlers = stderr
"""


def daemon_command() -> list[str]:
    exe = Path(sys.executable).parent / "ovirt-imageio"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("ovirt-imageio")
    if found is None:
        raise BenchError("ovirt-imageio is not installed in the venv (pip install -e '.[test]')")
    return [found]


@contextmanager
def serve(ws: Workspace, tls: TLSFiles | None) -> Iterator[Server]:
    home = ws.root / f"imageio-{scheme(tls)}"
    (home / "conf.d").mkdir(parents=True)
    (home / "run").mkdir()
    port = free_port()
    (home / "conf.d" / "50-bench.conf").write_text(daemon_conf(home, port, tls))
    proc = Proc("ovirt-imageio", [*daemon_command(), "-c", str(home)], home / "daemon.log")
    try:
        proc.wait_ready(tcp_ready(port))
        proc.wait_ready(unix_ready(home / "control.sock"))
        yield TicketServer(proc, f"{scheme(tls)}://127.0.0.1:{port}", home / "control.sock",
                           home / "images", ws)
    finally:
        proc.stop()
