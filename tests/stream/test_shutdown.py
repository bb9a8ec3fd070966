"""A SIGTERM ends the daemon in bounded time, whatever is in flight."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from .daemon import Daemon


def test_sigterm_with_a_slow_download_ends_soon_after_the_drain(tmp_path: Path) -> None:
    """After the drain, aiohttp waited its own 60 s for the handler, then
    60 s more once it was canceled: a slow reader made a SIGTERM take two
    minutes past daemon.drain_timeout (181 s with the default drain)."""
    config = tmp_path / "sluice.toml"
    config.write_text("[daemon]\ndrain_timeout = 1\n")
    d = Daemon(tmp_path / "data", args=["--config", str(config)])
    try:
        image = d.images / "big.raw"
        image.write_bytes(b"\xa5" * (64 << 20))
        url = d.add_ticket(image, ops=["read"])
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.connect(("127.0.0.1", d.port))
        path = url.split(str(d.port), 1)[1]
        reader.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert reader.recv(4096).startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        deadline = start + 30
        while d.proc.poll() is None and time.monotonic() < deadline:
            try:
                reader.recv(4096)  # slowly: about 20 KB/s
            except OSError:
                break
            time.sleep(0.2)
        try:
            d.proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            raise AssertionError("the daemon did not exit within 30 s of SIGTERM") from None
        assert time.monotonic() - start < 1 + 2 * 5 + 5  # drain, grace twice, slack
        assert d.proc.returncode == 0, d.read_log()[-2000:]
        reader.close()
    finally:
        d.stop()
