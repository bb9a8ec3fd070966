"""Regressions found by an audit of the daemon's startup, config, security
and OVF store routes: each test failed on the code before its fix."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from stream import configload
from stream.app import make_app
from stream.config import Config, InvalidConfig
from stream.server import bind_control

from .conftest import Client
from .daemon import Daemon, UnixHTTPConnection, free_port, make_cert
from .test_ovf import build_tar, push

MiB = 1 << 20
SD = "6a1d7c2e-0c4b-4b8e-9d43-7f2a7a1b0c11"


def sluice(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stream", "serve", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=30)


def toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sluice.toml"
    path.write_text(text)
    return str(path)


# -- the config file


def test_domains_of_the_example_config_load(tmp_path: Path) -> None:
    """A ``[[domains]]`` table with any option besides ``uuid`` (the
    shipped example's) died with a TypeError traceback."""
    path = toml(tmp_path, f'[[domains]]\nuuid = "{SD.upper()}"\ntype = "file"\n'
                          f'path = "/srv/sluice/nfs-domain"\n'
                          f'[[domains]]\nuuid = "{uuid.uuid4()}"\ntype = "block"\n'
                          f'devices = ["/dev/sdb", "/dev/sdc"]\n')
    cfg = configload.load(path)
    first = cfg.domains[0]
    assert (first.uuid, first.type, first.path) == (SD, "file", "/srv/sluice/nfs-domain")
    assert cfg.domains[1].devices == ["/dev/sdb", "/dev/sdc"]
    example = Path(__file__).parents[2] / "conf" / "sluice.toml.example"
    uncommented = example.read_text().replace("# [[domains]]", "[[domains]]").replace(
        "# uuid", "uuid").replace("# type", "type").replace("# path", "path")
    assert len(configload.load(toml(tmp_path, uncommented)).domains) == 1


@pytest.mark.parametrize("text,args,says", [
    ("daemon = 5\n", [], "daemon must be a table"),
    ("daemon = 5\n", ["--listen", "127.0.0.1:1"], "daemon must be a table"),
    ("domains = [1]\n", [], "domains must be a table"),
    ('[[domains]]\ntype = "file"\npath = "/srv/d"\n', [], "domains.uuid is required"),
    ('[[domains]]\nuuid = "x"\n', [], "malformed UUID"),
    (f'[[domains]]\nuuid = "{SD}"\n', [], "needs an absolute path"),
    (f'[[domains]]\nuuid = "{SD}"\ntype = "block"\ndevices = [1]\n', [],
     "must be a list of strings"),
    (f'[[domains]]\nuuid = "{SD}"\npath = "/a"\n[[domains]]\nuuid = "{SD}"\npath = "/b"\n',
     [], "listed twice"),
    ('[daemon]\nlog_level = "LOUD"\n', [], "daemon.log_level must be one of"),
    ("", ["--log-level", "verbose"], "daemon.log_level must be one of"),
    # It said "daemon.listen must be HOST:PORT", which it is.
    ("", ["--listen", "127.0.0.1:99999"],
     "the port of daemon.listen must be 1 to 65535, not 99999 (in '127.0.0.1:99999')"),
], ids=["section-not-table", "section-not-table-with-override", "domain-not-table",
        "domain-without-uuid", "domain-bad-uuid", "file-domain-without-path",
        "devices-not-strings", "domain-twice", "log-level", "log-level-option",
        "listen-port-out-of-range"])
def test_bad_config_is_one_sentence(
        tmp_path: Path, text: str, args: list[str], says: str) -> None:
    r = sluice("--config", toml(tmp_path, text), "--data-dir", str(tmp_path / "data"),
               *args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sluice: ") and says in lines[0], r.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("section,key,value", [
    ("transfer", "max_zero_step", 0),  # PATCH zero looped forever
    ("transfer", "max_zero_step", -MiB),
    ("transfer", "pool_buffers", -1),
    ("transfer", "inactivity_timeout", 0),
    ("transfer", "remove_timeout", -1),
    ("monitor", "interval", 0),
    ("monitor", "timeout", -5),
    ("ovf", "store_size", 0),  # refused by ensure_stores only at startup, with a traceback
    ("ovf", "store_size", MiB + 1),
    ("engine", "token", "secret\n"),  # never matches the stripped header
    ("engine", "ca", "/etc/pki/engine-ca.pem"),  # without TLS: silently no effect
    ("daemon", "data_dir", ""),  # silently the current directory
])
def test_values_out_of_range_are_refused(section: str, key: str, value: Any) -> None:
    with pytest.raises(InvalidConfig, match=rf"{section}\.{key}"):
        configload.parse({section: {key: value}})


@pytest.mark.parametrize("listen,says", [
    ("127.0.0.1:99999", "the port of daemon.listen must be 1 to 65535, not 99999"),
    ("[::1]:65536", "the port of daemon.listen must be 1 to 65535, not 65536"),
    ("127.0.0.1:0", "the port of daemon.listen must be 1 to 65535, not 0"),
    ("127.0.0.1:" + "9" * 5000, "the port of daemon.listen must be 1 to 65535"),  # no int()
    ("127.0.0.1", "daemon.listen must be HOST:PORT, not '127.0.0.1'"),
    ("127.0.0.1:http", "daemon.listen must be HOST:PORT, not '127.0.0.1:http'"),
])
def test_a_bad_listen_address_says_what_is_wrong(listen: str, says: str) -> None:
    with pytest.raises(InvalidConfig) as e:
        configload.parse({"daemon": {"listen": listen}})
    assert str(e.value).startswith(says), str(e.value)


@pytest.mark.parametrize("listen", ["127.0.0.1:1", "[::1]:65535", "0.0.0.0:54322"])
def test_ports_1_to_65535_are_accepted(listen: str) -> None:
    assert configload.parse({"daemon": {"listen": listen}}).daemon.listen == listen


def test_show_config_masks_the_engine_token(tmp_path: Path) -> None:
    path = toml(tmp_path, '[engine]\ntoken = "s3cr3t-engine-token"\n')
    r = sluice("--config", path, "--show-config", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "s3cr3t" not in r.stdout
    assert json.loads(r.stdout)["engine"]["token"] == "(set)"
    r = sluice("--show-config", cwd=tmp_path)
    assert json.loads(r.stdout)["engine"]["token"] == "", "an empty token is shown as is"


# -- startup: TLS files, the control socket


def test_tls_files_are_checked_first_and_named(tmp_path: Path) -> None:
    """A key that does not match the certificate: the error named neither
    file, and came after the data directory and its stores were made."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert, _ = make_cert(tmp_path / "a")
    _, other_key = make_cert(tmp_path / "b")
    data = tmp_path / "data"
    r = sluice("--data-dir", str(data), "--listen", f"127.0.0.1:{free_port()}",
               "--cert", cert, "--key", other_key, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("sluice: cannot start: cannot load TLS certificate")
    assert cert in r.stderr and other_key in r.stderr and "mismatch" in r.stderr
    assert not data.exists()


def test_a_file_at_the_control_socket_path_is_kept(tmp_path: Path) -> None:
    """A mistyped --control-socket naming a regular file: it was deleted."""
    precious = tmp_path / "precious.conf"
    precious.write_text("keep me\n")
    r = sluice("--data-dir", str(tmp_path / "data"), "--listen", f"127.0.0.1:{free_port()}",
               "--control-socket", str(precious), cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr == f"sluice: cannot start: {precious}: exists and is not a socket\n"
    assert precious.read_text() == "keep me\n"


def _pool(control: str) -> int:
    conn = UnixHTTPConnection(control)
    try:
        conn.request("GET", "/pool")
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_running_daemons_control_socket_is_kept(tmp_path: Path) -> None:
    """A second ``sluice serve`` given the first one's control socket removed
    it as "stale" (and again on its way out)."""
    first = Daemon(tmp_path / "data")
    try:
        r = sluice("--data-dir", str(tmp_path / "data2"), "--control-socket",
                   str(first.control), "--listen", f"127.0.0.1:{free_port()}", cwd=tmp_path)
        assert r.returncode == 1
        assert "another daemon listens on this control socket" in r.stderr
        assert _pool(first.control) == 200
    finally:
        first.stop()


def test_a_second_daemon_on_one_data_dir_is_refused(tmp_path: Path) -> None:
    """With its own control socket a second daemon used to start on the
    same data directory, and both wrote the same domain and OVF stores."""
    first = Daemon(tmp_path / "data")
    try:
        r = sluice("--data-dir", str(tmp_path / "data"), "--listen",
                   f"127.0.0.1:{free_port()}", "--control-socket", str(tmp_path / "other.sock"),
                   cwd=tmp_path)
        assert r.returncode == 1
        assert f"another sluice serve (pid {first.proc.pid}) uses this data directory" \
            in r.stderr
        assert not (tmp_path / "other.sock").exists()
        assert _pool(first.control) == 200
    finally:
        first.stop()
    again = Daemon(tmp_path / "data")  # the lock went with the first daemon
    again.stop()


def test_a_control_socket_in_a_missing_directory_is_named(tmp_path: Path) -> None:
    where = tmp_path / "no" / "such" / "control.sock"
    r = sluice("--data-dir", str(tmp_path / "data"), "--listen", f"127.0.0.1:{free_port()}",
               "--control-socket", str(where), cwd=tmp_path)
    assert r.returncode == 1
    assert f"cannot start: {where}: No such file or directory" in r.stderr


def test_a_stale_control_socket_is_replaced(tmp_path: Path) -> None:
    """The other side of the test above (it passed before the fix too): a
    crashed daemon's socket, which nobody listens on, is still replaced."""
    crashed = Daemon(tmp_path / "data")
    crashed.kill()
    assert stat.S_ISSOCK(os.lstat(crashed.control).st_mode)
    again = Daemon(tmp_path / "data")
    try:
        assert _pool(again.control) == 200
    finally:
        again.stop()


def test_control_socket_has_its_mode_before_it_listens(tmp_path: Path) -> None:
    """The socket was made 0660 only after it listened: with a permissive
    umask, a local user could connect in between and keep the connection."""
    path = str(tmp_path / "control.sock")
    old = os.umask(0)
    try:
        sock = bind_control(path)
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        with socket.socket(socket.AF_UNIX) as probe, \
                pytest.raises(ConnectionRefusedError):
            probe.connect(path)  # not listening yet
    finally:
        sock.close()


async def test_token_file_readable_by_others_is_made_private(
        aiohttp_client: Any, cfg: Config) -> None:
    data = Path(cfg.daemon.data_dir)
    data.mkdir()
    token = data / "engine.token"
    token.write_text("my-engine-token\n")
    token.chmod(0o644)
    app: web.Application = make_app(cfg)
    c = await aiohttp_client(app)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert (await c.get("/pool")).status == 401
    resp = await c.get("/pool", headers={"Authorization": "Bearer my-engine-token"})
    assert resp.status == 200


def _logged(daemon: Daemon, text: str) -> None:
    """Return once the daemon has logged ``text``."""
    deadline = time.monotonic() + 20
    while text not in daemon.read_log():
        assert daemon.proc.poll() is None or text in daemon.read_log(), daemon.read_log()
        assert time.monotonic() < deadline, f"never logged {text!r}"
        time.sleep(0.02)


def test_sigterm_lets_an_upload_in_flight_finish(tmp_path: Path) -> None:
    """aiohttp's shutdown stops reading every connection: the rest of the
    body was dropped, the upload hung until the shutdown timeout and failed."""
    d = Daemon(tmp_path / "data")
    try:
        sd = json.loads(d.request("GET", "/pool")[1])["master_domain"]
        tar, _ = build_tar(sd, count=20)
        with socket.create_connection(("127.0.0.1", d.port), timeout=20) as s:
            s.sendall(f"PUT /domains/{sd}/ovf-store HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: Bearer {d.token}\r\n"
                      f"Content-Length: {len(tar)}\r\n\r\n".encode() + tar[:4096])
            _logged(d, "OVF update began")
            d.proc.send_signal(signal.SIGTERM)
            _logged(d, "shutting down")
            with pytest.raises(ConnectionRefusedError):  # no new connections
                socket.create_connection(("127.0.0.1", d.port), timeout=5).close()
            s.sendall(tar[4096:])
            answer = b""
            while chunk := s.recv(65536):  # the daemon closes it as it exits
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["generation"] == 1
        assert d.proc.wait(20) == 0
    finally:
        d.stop()


# -- OVF store routes


@pytest.fixture
async def sd(client: Client) -> str:
    found: str = (await (await client.get("/pool")).json())["master_domain"]
    return found


async def test_head_of_the_ovf_store_sends_no_body(client: Client, sd: str) -> None:
    """HEAD streamed the whole tar after its headers: on a kept-alive
    connection the client read the archive as the next answer."""
    tar, _ = build_tar(sd)
    assert (await push(client, sd, tar))[0] == 200
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        for method in ("HEAD", "GET"):
            what = "ovf-store" if method == "HEAD" else "ovf-store/info"
            writer.write(f"{method} /domains/{sd}/{what} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 "), head[:200]
            if method == "HEAD":
                assert f"Content-Length: {len(tar)}\r\n".encode() in head
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        info = json.loads(await reader.readexactly(length))
        assert info["sd_uuid"] == sd
    finally:
        writer.close()
        await writer.wait_closed()


async def test_ovf_name_in_upper_case(client: Client, sd: str) -> None:
    """A UUID names the same entity in any case (the domain's is taken in
    any case); the OVF's was refused with 400."""
    tar, ovfs = build_tar(sd)
    assert (await push(client, sd, tar))[0] == 200
    vm, data = next(iter(ovfs.items()))
    resp = await client.get(f"/domains/{sd.upper()}/ovf-store/{vm.upper()}.ovf")
    assert resp.status == 200, await resp.text()
    assert await resp.read() == data
    resp = await client.get(f"/domains/{sd}/ovf-store/{vm.upper()}.OVF")
    assert resp.status == 200


def test_errno_of_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    """The message named no path ("cannot start: File exists")."""
    taken = tmp_path / "data"
    taken.write_text("")
    r = sluice("--data-dir", str(taken), "--listen", f"127.0.0.1:{free_port()}", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr == f"sluice: cannot start: {taken}: {os.strerror(errno.EEXIST)}\n"
