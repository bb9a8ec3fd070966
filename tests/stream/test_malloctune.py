"""glibc's malloc thresholds (stream.malloctune): set in the daemon, so that
receiving a body does not give heap pages back and fault them in again."""

from __future__ import annotations

import http.client
import subprocess
import sys
from pathlib import Path

import pytest

from stream import malloctune

from .daemon import Daemon

MiB = 1 << 20
PAGE = 4096

needs_glibc = pytest.mark.skipif(not malloctune.glibc(), reason="the C library is not glibc")


@needs_glibc
def test_tune_is_taken_by_glibc() -> None:
    # In a process of its own: the thresholds are the whole process's.
    out = subprocess.run([sys.executable, "-c", "from stream import malloctune; "
                          "print(malloctune.tune())"], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "True"


def minor_faults(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7])  # minflt


def put(url: str, path: Path, size: int) -> None:
    host, rest = url.removeprefix("http://").split("/", 1)
    conn = http.client.HTTPConnection(host, timeout=60, blocksize=MiB)
    try:
        with open(path, "rb") as body:
            conn.request("PUT", "/" + rest, body=body, headers={"Content-Length": str(size)})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        resp.read()
    finally:
        conn.close()


@needs_glibc
def test_an_upload_faults_in_few_pages(tmp_path: Path) -> None:
    """The second 128 MiB PUT into a warm daemon: with glibc's own
    thresholds it faulted in about half of its 32,768 pages (the heap's
    top given back and taken again piece after piece); now a handful."""
    size = 128 * MiB
    src = tmp_path / "src.raw"
    with open(src, "wb") as f:
        for i in range(size // MiB):
            f.write(bytes([i % 251 + 1]) * MiB)
    d = Daemon(tmp_path / "data", args=["--log-level", "INFO"])
    try:
        (d.images / "dst.raw").write_bytes(b"")
        url = d.add_ticket(d.images / "dst.raw", size=size)
        put(url, src, size)  # warm: buffers, heap, imports
        before = minor_faults(d.proc.pid)
        put(url, src, size)
        faults = minor_faults(d.proc.pid) - before
    finally:
        d.stop()
    assert faults < size // PAGE // 20, faults
    assert (d.images / "dst.raw").read_bytes() == src.read_bytes()
