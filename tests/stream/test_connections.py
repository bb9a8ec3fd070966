"""Bounds on the data port's connections, on a real ``sluice serve``."""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from .daemon import Daemon, make_cert

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


def test_at_the_cap_with_no_idle_connection_the_new_one_is_refused(tmp_path: Path) -> None:
    """Connections with a request in progress are never closed to make
    room: past the cap the new connection is closed at once, unanswered,
    and the transfers go on."""
    d = start(tmp_path, "[daemon]\nmax_connections = 2\n")
    uploads: list[socket.socket] = []
    try:
        size = 1 << 20
        for i in range(2):
            image = d.images / f"image{i}.raw"
            image.write_bytes(b"")
            url = d.add_ticket(image, size=size)
            s = connect(d)
            path = url.split(f":{d.port}", 1)[1]
            s.sendall(f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n"
                      .encode() + b"a" * 4096)
            uploads.append(s)
        time.sleep(1.2)  # silent for longer than QUIET, but in a request
        with connect(d) as extra:
            extra.settimeout(5)
            with contextlib.suppress(OSError):  # closed before it went out
                extra.sendall(INFO)
            assert closed_by_server(extra)
        assert "data connections at the limit (2)" in d.read_log()
        for i, s in enumerate(uploads):
            s.sendall(b"a" * (size - 4096))
            head = s.recv(4096)
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert (d.images / f"image{i}.raw").read_bytes() == b"a" * size
    finally:
        for s in uploads:
            s.close()
        d.stop()


def test_tls_connections_count_from_their_accept(tmp_path: Path) -> None:
    """Over TLS a connection counted only once its handshake was done: 600
    connections that never sent a ClientHello held descriptors past the cap
    until the daemon ran out.  Now one in its handshake counts, and after
    QUIET seconds it may be closed to make room."""
    cert = make_cert(tmp_path)
    path = tmp_path / "sluice.toml"
    path.write_text("[daemon]\nmax_connections = 5\n")
    d = Daemon(tmp_path / "data", tls=cert, args=["--config", str(path)])
    silent: list[socket.socket] = []
    try:
        silent = [connect(d) for _ in range(5)]  # no ClientHello, ever
        time.sleep(2.5)  # QUIET, with room for a loaded host
        newer = [connect(d) for _ in range(5)]  # each takes an old one's place
        silent += newer
        for s in silent[:5]:
            s.settimeout(5)
            assert closed_by_server(s)  # not after the 60 s handshake timeout
        time.sleep(2.5)  # QUIET, with room for a loaded host
        ctx = ssl.create_default_context(cafile=cert[0])
        with ctx.wrap_socket(connect(d), server_hostname="127.0.0.1") as tls:
            assert b" 200 " in ask_info(cast(socket.socket, tls))
        assert closed_by_server(newer[0])
        assert "data connections at the limit (5)" in d.read_log()
    finally:
        for s in silent:
            s.close()
        d.stop()


def test_a_failed_handshake_frees_its_place(tmp_path: Path) -> None:
    cert = make_cert(tmp_path)
    path = tmp_path / "sluice.toml"
    path.write_text("[daemon]\nmax_connections = 3\n")
    d = Daemon(tmp_path / "data", tls=cert, args=["--config", str(path)])
    try:
        for _ in range(10):  # plain HTTP to the TLS port: the handshake fails
            with connect(d) as s:
                s.sendall(INFO)
                assert closed_by_server(s)
        ctx = ssl.create_default_context(cafile=cert[0])
        for _ in range(3):  # at once, with no wait for an eviction
            with ctx.wrap_socket(connect(d), server_hostname="127.0.0.1") as tls:
                assert b" 200 " in ask_info(cast(socket.socket, tls))
        assert "at the limit" not in d.read_log()
    finally:
        d.stop()


@pytest.mark.parametrize("request_bytes,detail", [
    (b"PUT /images/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
     "malformed HTTP request: Invalid character in chunk size: b'zz'"),
    (b"GET /info/ HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
     "malformed HTTP request: Invalid header token: b'Bad Header'"),
], ids=["chunk-size", "header"])
def test_a_malformed_request_gets_a_json_error(quick: Daemon, request_bytes: bytes,
                                               detail: str) -> None:
    """What aiohttp's parser refuses, before any handler runs, is answered
    as every other error (JSON, one log line), not with aiohttp's text and
    a traceback in the log."""
    with contextlib.closing(connect(quick)) as s:
        s.sendall(request_bytes)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 400 ") and b"application/json" in head, answer
    assert json.loads(body) == {"error": "bad-request", "detail": detail}
    log = quick.read_log()
    said = detail.removeprefix("malformed HTTP request: ")
    assert f"malformed HTTP request from 127.0.0.1: 400 {said}" in log
    assert "Traceback" not in log
