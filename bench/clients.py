"""The clients that drive the transfers: curl, and ovirt-imageio's own client.

Each returns the seconds the transfer took, as the client itself timed it:
curl's time_total (connect, TLS handshake, body and the server's reply,
which for imageio and Sluice comes after their fsync), and for the imageio
client the wall time of its upload()/download() call, in a subprocess so
its qemu-nbd and threads never share the bench's process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import MB, BenchError

REPO = Path(__file__).resolve().parents[1]
#: Generous: a transfer is killed only if it runs slower than 10 MB/s.
MIN_RATE = 10 * MB


def _timeout(size: int) -> float:
    return 120 + size / MIN_RATE


def _run(argv: list[str], size: int, stdin: Any = None) -> str:
    try:
        done = subprocess.run(argv, stdin=stdin, capture_output=True, timeout=_timeout(size),
                              cwd=REPO, check=False)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{argv[0]} timed out after {e.timeout:.0f} s") from e
    if done.returncode != 0:
        detail = (done.stdout + done.stderr).decode(errors="replace").strip()[-800:]
        raise BenchError(f"{Path(argv[0]).name} exited with {done.returncode}: {detail}")
    return done.stdout.decode()


def _curl(args: list[str], size: int, field: str, cafile: Path | None,
          stdin: Any = None, framing: bool = False) -> float:
    """Run curl; check the status and the byte count (framing: chunked
    uploads count their chunk headers too, so only a lower bound holds)."""
    tls = ["--cacert", str(cafile)] if cafile is not None else []
    out = _run(["curl", "-sS", "--fail-with-body", "--http1.1", *tls, "-w", "\n%{json}", *args],
               size, stdin)
    info = json.loads(out.rsplit("\n", 1)[1])
    if not 200 <= int(info["http_code"]) < 300:
        raise BenchError(f"curl: HTTP {info['http_code']}")
    moved = int(info[field])
    if (moved < size) if framing else (moved != size):
        raise BenchError(f"curl moved {moved} bytes, expected {size}")
    return float(info["time_total"])


def curl_upload(src: Path, url: str, size: int, cafile: Path | None) -> float:
    """PUT with Content-Length (curl -T FILE)."""
    return _curl(["-o", "/dev/null", "-T", str(src), url], size, "size_upload", cafile)


def curl_upload_chunked(src: Path, url: str, size: int, cafile: Path | None) -> float:
    """PUT with Transfer-Encoding: chunked, the body fed on stdin."""
    with open(src, "rb") as f:
        return _curl(["-o", "/dev/null", "-H", "Transfer-Encoding: chunked", "-T", "-", url],
                     size, "size_upload", cafile, stdin=f, framing=True)


def curl_download(dest: Path, url: str, size: int, cafile: Path | None) -> float:
    """GET into a new file (curl -o FILE)."""
    return _curl(["-o", str(dest), url], size, "size_download", cafile)


def curl_download_null(dest: Path, url: str, size: int, cafile: Path | None) -> float:
    """GET into /dev/null: what the server sends, without the client's page
    cache writes (which cap curl -o on the VM kind this runs on)."""
    return _curl(["-o", "/dev/null", url], size, "size_download", cafile)


def _imageio_client(op: str, local: Path, url: str, size: int, cafile: Path | None) -> float:
    out = _run([sys.executable, "-m", "bench.imageio_client", op, str(local), url,
                str(cafile or "")], size)
    return float(json.loads(out.strip().splitlines()[-1])["seconds"])


def imageio_upload(src: Path, url: str, size: int, cafile: Path | None) -> float:
    return _imageio_client("upload", src, url, size, cafile)


def imageio_download(dest: Path, url: str, size: int, cafile: Path | None) -> float:
    return _imageio_client("download", dest, url, size, cafile)


UPLOADERS = {
    "curl": curl_upload,
    "curl-chunked": curl_upload_chunked,
    "imageio-client": imageio_upload,
}
#: Download clients that keep nothing to verify.
DISCARDING = {"curl-null"}
DOWNLOADERS = {
    "curl": curl_download,
    "curl-null": curl_download_null,
    "imageio-client": imageio_download,
}
