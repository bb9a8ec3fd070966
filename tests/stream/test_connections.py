"""Bounds on the data port's connections, on a real ``sluice serve``."""

from __future__ import annotations

import resource
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .daemon import Daemon

INFO = b"GET /info/ HTTP/1.1\r\nHost: x\r\n\r\n"


def start(tmp_path: Path, conf: str) -> Daemon:
    path = tmp_path / "sluice.toml"
    path.write_text(conf)
    return Daemon(tmp_path / "data", args=["--config", str(path)])


@pytest.fixture
def quick(tmp_path: Path) -> Iterator[Daemon]:
    """Connections get 1 s for their first request."""
    d = start(tmp_path, "[daemon]\nrequest_head_timeout = 1\n")
    yield d
    d.stop()


def connect(d: Daemon) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", d.port), timeout=15)
    return s


def closed_by_server(s: socket.socket) -> bool:
    """Wait (up to the socket timeout) for the server to close ``s``."""
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def ask_info(s: socket.socket) -> bytes:
    s.sendall(INFO)
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        chunk = s.recv(4096)
        assert chunk, f"closed after {answer!r}"
        answer += chunk
    return answer


def until(cond: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_open_files_limit_is_raised(tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard <= 512:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise")
    d = Daemon(tmp_path / "data", nofile=512)
    try:
        limits = Path(f"/proc/{d.proc.pid}/limits").read_text()
        (line,) = [x for x in limits.splitlines() if x.startswith("Max open files")]
        assert line.split()[3:5] == [str(hard), str(hard)]
        assert f"open files limit: {hard} (hard limit {hard})" in d.read_log()
    finally:
        d.stop()


def test_connection_without_request_is_closed(quick: Daemon) -> None:
    idle = [connect(quick) for _ in range(5)]
    partial = connect(quick)
    partial.sendall(b"GET /info/ HTTP/1.1\r\n")  # a head never finished
    used = connect(quick)
    try:
        assert b" 200 " in ask_info(used)
        start = time.monotonic()
        assert all(closed_by_server(s) for s in [*idle, partial])
        # 1 s bound; generous for a loaded host.
        assert time.monotonic() - start < 10
        # A connection that sent a request keeps aiohttp's keep-alive.
        time.sleep(1.5)
        assert b" 200 " in ask_info(used)
    finally:
        for s in [*idle, partial, used]:
            s.close()


def test_at_the_cap_the_oldest_idle_connection_makes_room(tmp_path: Path) -> None:
    """One request per connection (no credential needed) held every slot
    for aiohttp's keep-alive hour, and the cap then refused everyone else,
    transfers included (found by a review).  Now the oldest connection
    waiting between requests is closed to make room."""
    d = start(tmp_path, "[daemon]\nmax_connections = 5\n")
    held: list[socket.socket] = []
    try:
        held = [connect(d) for _ in range(5)]
        for s in held:  # each sent one request, then waits: idle, not closed
            assert b" 200 " in ask_info(s)
        time.sleep(1.2)  # silent for long enough (QUIET)
        with connect(d) as extra:
            assert b" 200 " in ask_info(extra)  # room was made for it
        assert closed_by_server(held[0])  # the one silent longest
        # The control socket still answers, and so does a newer connection.
        image = d.images / "image.raw"
        image.write_bytes(b"x" * 4096)
        d.add_ticket(image)
        assert b" 200 " in ask_info(held[-1])
        assert "data connections at the limit (5)" in d.read_log()
    finally:
        for s in held:
            s.close()
        d.stop()


def test_a_request_head_being_sent_is_never_evicted(tmp_path: Path) -> None:
    """The parser hides a half-received head: a transfer's keep-alive
    connection sending its next request was closed to make room (found by
    a review); the connection silent longest goes instead."""
    d = start(tmp_path, "[daemon]\nmax_connections = 5\n")
    held: list[socket.socket] = []
    try:
        held = [connect(d) for _ in range(5)]
        for s in held:
            assert b" 200 " in ask_info(s)
        time.sleep(1.2)
        sending = held[0]  # the oldest, and silent longest, until now
        sending.sendall(INFO[:20])  # half a head
        with connect(d) as extra:
            assert b" 200 " in ask_info(extra)
        assert closed_by_server(held[1])  # now the one silent longest
        sending.sendall(INFO[20:])
        answer = b""
        while not answer.rstrip().endswith(b"}"):
            chunk = sending.recv(4096)
            assert chunk, f"closed after {answer!r}"
            answer += chunk
        assert b" 200 " in answer
    finally:
        for s in held:
            s.close()
        d.stop()
