"""nginx (Debian's /usr/sbin/nginx) with WebDAV PUT as a peer.

A plain file server: PUT receives the body into a temp file and renames it
(it does not fsync), GET serves the file.  It runs in the foreground with
its own prefix and config in the work dir, on 127.0.0.1 only.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .. import BenchError
from ..procs import Proc, tcp_ready
from ..tls import TLSFiles
from ..workspace import Workspace, free_port, remove
from .base import Server, Target, link_source, scheme

UPLOAD_CLIENTS = ("curl", "curl-chunked")
DOWNLOAD_CLIENTS = ("curl", "curl-null")
NGINX = "/usr/sbin/nginx"
TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def nginx_conf(home: Path, port: int, tls: TLSFiles | None) -> str:
    temps = "\n".join(f"    {name}_temp_path {home}/{name};" for name in TEMP_DIRS)
    ssl = f"""ssl;
        ssl_certificate {tls.cert};
        ssl_certificate_key {tls.key};""" if tls is not None else ";"
    # One worker: a single connection is served by one worker anyway, and
    # the CPU figure then holds no idle process.
    return f"""\
daemon off;
master_process on;
worker_processes 1;
user root;
pid {home}/nginx.pid;
error_log {home}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
{temps}
    server {{
        listen 127.0.0.1:{port} {ssl}
        root {home}/root;
        location / {{
            dav_methods PUT;
            client_max_body_size 0;
            create_full_put_path on;
        }}
    }}
}}
"""


class NginxServer:
    def __init__(self, proc: Proc, base_url: str, root: Path, ws: Workspace) -> None:
        self.proc = proc
        self.base_url = base_url
        self.root = root
        self.ws = ws

    def upload_target(self) -> Target:
        name = f"upload-{uuid.uuid4().hex[:8]}.img"
        path = self.root / name
        return Target(url=f"{self.base_url}/{name}", path=path, cleanup=lambda: remove(path))

    def download_target(self) -> Target:
        path = self.root / "download.img"
        if not path.exists():
            link_source(self.ws, path)
        return Target(url=f"{self.base_url}/download.img", path=path)


@contextmanager
def serve(ws: Workspace, tls: TLSFiles | None) -> Iterator[Server]:
    if shutil.which(NGINX) is None:
        raise BenchError(f"{NGINX} is missing (apt-get install nginx-light)")
    home = ws.root / f"nginx-{scheme(tls)}"
    for name in ("root", *TEMP_DIRS):
        (home / name).mkdir(parents=True)
    port = free_port()
    conf = home / "nginx.conf"
    conf.write_text(nginx_conf(home, port, tls))
    proc = Proc("nginx", [NGINX, "-p", str(home), "-c", str(conf), "-e", str(home / "error.log")],
                home / "error.log")
    try:
        proc.wait_ready(tcp_ready(port))
        yield NginxServer(proc, f"{scheme(tls)}://127.0.0.1:{port}", home / "root", ws)
    finally:
        proc.stop()
