"""End to end: ``sluice serve`` in a subprocess, driven by curl and by the
real ovirt-imageio client from PyPI (which needs qemu-img and qemu-nbd);
its defaults, config file, control socket and TLS (versions, the engine's
client certificate) checked with Python's own ssl and http.client."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard
from ovirt_imageio import client as imageio_client

from stream.server import tls_context

from .daemon import Daemon, UnixHTTPConnection, free_port, make_cert
from .test_ovf import build_tar

MiB = 1 << 20

# ovirt-imageio 2.5.1's client leaves the unix sockets to its qemu-nbd open.
pytestmark = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

needs_qemu = pytest.mark.skipif(
    not (shutil.which("qemu-img") and shutil.which("qemu-nbd") and shutil.which("qemu-io")),
    reason="qemu-img, qemu-io and qemu-nbd (Debian qemu-utils) are needed",
)
needs_curl = pytest.mark.skipif(not shutil.which("curl"), reason="curl is needed")


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return make_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module", params=["http", "https"])
def daemon(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
    cert: tuple[str, str],
) -> Iterator[Daemon]:
    tls = cert if request.param == "https" else None
    d = Daemon(tmp_path_factory.mktemp("daemon") / "data", tls)
    yield d
    d.stop()


def curl(daemon: Daemon, *args: str, cert: tuple[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = ["curl", "-sS", "--fail-with-body", "--cacert", cert[0], *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def sparse_raw(path: Path, size: int) -> bytes:
    """A raw image with holes, data at a few places; returns its bytes."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off in (0, size // 3, size - 4096):
            f.seek(off)
            f.write(os.urandom(4096 if off == size - 4096 else MiB))
    return path.read_bytes()


@needs_curl
@pytest.mark.parametrize("mode", ["content-length", "chunked", "zstd"])
def test_curl_upload(
    daemon: Daemon, tmp_path: Path, cert: tuple[str, str], mode: str
) -> None:
    src = tmp_path / "src.raw"
    data = os.urandom(5 * MiB + 333)
    src.write_bytes(data)
    dst = daemon.images / f"{mode}.raw"
    dst.write_bytes(b"")
    url = daemon.add_ticket(dst, size=len(data))
    if mode == "content-length":
        r = curl(daemon, "-T", str(src), url, cert=cert)
    elif mode == "chunked":
        r = subprocess.run(
            f"cat {src} | curl -sS --fail-with-body --cacert {cert[0]} "
            f"-H 'Transfer-Encoding: chunked' -T - {url}",
            shell=True, capture_output=True, text=True, timeout=120,
        )
    else:
        packed = tmp_path / "src.raw.zst"
        packed.write_bytes(zstandard.ZstdCompressor().compress(data))
        r = curl(daemon, "-H", "Content-Encoding: zstd", "-T", str(packed), url, cert=cert)
    assert r.returncode == 0, r.stdout + r.stderr
    assert dst.read_bytes() == data
    r = curl(daemon, "-o", str(tmp_path / "back.raw"), url, cert=cert)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "back.raw").read_bytes() == data


@needs_qemu
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_imageio_client_round_trip(daemon: Daemon, tmp_path: Path, fmt: str) -> None:
    size = 64 * MiB
    raw = tmp_path / "src.raw"
    sparse_raw(raw, size)
    src = raw
    if fmt == "qcow2":
        src = tmp_path / "src.qcow2"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(src)],
                       check=True)
    target = daemon.images / f"disk-{fmt}.raw"
    with open(target, "wb") as f:
        f.truncate(size)
    url = daemon.add_ticket(target)

    imageio_client.upload(str(src), url, None, secure=False)
    assert subprocess.run(["qemu-img", "compare", str(src), str(target)]).returncode == 0

    back = tmp_path / f"back.{fmt}"
    imageio_client.download(url, str(back), None, fmt=fmt, secure=False)
    assert subprocess.run(["qemu-img", "compare", str(src), str(back)]).returncode == 0

    theirs = imageio_client.checksum(str(src))
    ours = _server_checksum(daemon, url)
    assert ours == theirs


def _server_checksum(daemon: Daemon, url: str) -> dict[str, object]:
    r = subprocess.run(["curl", "-sSk", "--fail-with-body", url + "/checksum"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    result: dict[str, object] = json.loads(r.stdout)
    return result


def test_show_config_and_bad_config(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "stream", "serve", "--show-config",
                        "--data-dir", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0
    assert json.loads(r.stdout)["daemon"]["data_dir"] == str(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon]\nlisten = 5\n")
    r = subprocess.run([sys.executable, "-m", "stream", "serve", "--config", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("sluice: option daemon.listen must be str")


def test_domain_uuid_and_token_survive_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    d = Daemon(data)
    try:
        status, body = d.request("GET", "/pool")
        sd_before = next(iter(json.loads(body)["domains"]))
        token_before = d.token
    finally:
        d.stop()
    d = Daemon(data)
    try:
        status, body = d.request("GET", "/pool")
        assert status == 200
        pool = json.loads(body)
        assert pool["map_version"] == 0
        assert next(iter(pool["domains"])) == sd_before
        assert d.token == token_before
    finally:
        d.stop()


@needs_curl
def test_logs_carry_the_transfer_id(daemon: Daemon, tmp_path: Path, cert: tuple[str, str]) -> None:
    dst = daemon.images / "logged.raw"
    dst.write_bytes(bytes(8192))
    url = daemon.add_ticket(dst, transfer_id="transfer-4242")
    src = tmp_path / "small"
    src.write_bytes(os.urandom(8192))
    assert curl(daemon, "-T", str(src), url, cert=cert).returncode == 0
    lines = [line for line in daemon.read_log().splitlines()
             if "WRITE offset=0 size=8192 " in line]
    assert lines and all("[transfer-4242]" in line for line in lines)


# -- the embedded default, the control socket, TLS and the config file


def _serve(*args: str, cwd: Path, control: Path, port: int) -> subprocess.Popen[bytes]:
    """``sluice serve ARGS`` in ``cwd``, once its control socket and data port answer."""
    log = open(cwd / f"serve-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "stream", "serve", *args], cwd=cwd,
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 20
    while True:
        try:
            if control.exists():
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise AssertionError((cwd / f"serve-{port}.log").read_text(errors="replace"))
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _show_config(*args: str, cwd: Path) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-m", "stream", "serve", "--show-config", *args],
                       cwd=cwd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    shown: dict[str, Any] = json.loads(r.stdout)
    return shown


def _get(port: int, path: str, context: ssl.SSLContext | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_embedded_defaults(tmp_path: Path) -> None:
    shown = _show_config(cwd=tmp_path)
    daemon = shown["daemon"]
    assert (daemon["data_dir"], daemon["listen"], daemon["control_socket"]) == (
        "sluice-data", "127.0.0.1:54322", "")
    # oVirt's OVF store layout: two stores of 128 MiB per domain.
    assert (shown["ovf"]["stores"], shown["ovf"]["store_size"]) == (2, 128 << 20)
    # 54322 may be taken on this machine: only --listen is given, the rest
    # is the default, so the state goes to ./sluice-data of the working dir.
    port = free_port()
    proc = _serve("--listen", f"127.0.0.1:{port}", cwd=tmp_path,
                  control=tmp_path / "sluice-data" / "control.sock", port=port)
    try:
        data = tmp_path / "sluice-data"
        sock = os.stat(data / "control.sock")
        assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) == 0o660
        assert len(list((data / "domains").glob("*/domain.json"))) == 1
        assert stat.S_IMODE(os.stat(data / "engine.token").st_mode) == 0o600
        status, body = _get(port, "/info/")
        assert status == 200, body
    finally:
        _stop(proc)
    assert not (data / "control.sock").exists(), "removed at shutdown"


@pytest.mark.parametrize("blocked", ["port", "control-socket"])
def test_a_daemon_that_cannot_listen_writes_nothing(tmp_path: Path, blocked: str) -> None:
    """It failed cleanly, but only after its startup had made the embedded
    default's domain, 256 MiB of OVF stores and a token."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1] if blocked == "port" else free_port()
        sock = tmp_path / ("run" if blocked == "port" else "missing") / "control.sock"
        (tmp_path / "run").mkdir()
        r = subprocess.run([sys.executable, "-m", "stream", "serve", "--data-dir",
                            str(tmp_path / "data"), "--listen", f"127.0.0.1:{port}",
                            "--control-socket", str(sock)],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("sluice: cannot start: ")
    assert ("Address already in use" if blocked == "port" else str(sock)) in r.stderr
    left = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert "domains" not in left and "engine.token" not in left, left


def test_a_daemon_without_proc_says_so(tmp_path: Path) -> None:
    """Volumes are opened through /proc/self/fd; without /proc each volume
    failed on its own, with an error naming a path under /proc."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) to hide /proc in a mount namespace")
    probe = subprocess.run([unshare, "--mount", "--propagation", "private", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"mount namespaces are not permitted here: {probe.stderr.strip()}")
    serve = [sys.executable, "-m", "stream", "serve", "--data-dir", str(tmp_path / "data"),
             "--listen", f"127.0.0.1:{free_port()}"]
    r = subprocess.run([unshare, "--mount", "--propagation", "private", "sh", "-c",
                        'mount -t tmpfs none /proc && exec "$@"', "sh", *serve],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("sluice: cannot start: /proc is not mounted: "), r.stderr
    assert not (tmp_path / "data" / "control.sock").exists()


def test_control_socket_option(tmp_path: Path) -> None:
    sock = tmp_path / "run" / "sluice.sock"
    sock.parent.mkdir()
    port = free_port()
    proc = _serve("--data-dir", str(tmp_path / "data"), "--listen", f"127.0.0.1:{port}",
                  "--control-socket", str(sock), cwd=tmp_path, control=sock, port=port)
    try:
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
        assert not (tmp_path / "data" / "control.sock").exists()
        conn = UnixHTTPConnection(str(sock))
        try:
            conn.request("GET", "/pool")
            resp = conn.getresponse()
            assert resp.status == 200
            assert json.loads(resp.read())["domains"]
        finally:
            conn.close()
    finally:
        _stop(proc)


def test_config_file_is_applied(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "sluice.toml"
    conf.write_text(f'[daemon]\ndata_dir = "{tmp_path / "state"}"\n'
                    f'listen = "127.0.0.1:{port}"\n'
                    f"[transfer]\nbuffer_size = {4 * MiB}\n"
                    f"[ovf]\nstores = 3\nstore_size = {8 * MiB}\n")
    shown = _show_config("--config", str(conf), cwd=tmp_path)
    assert shown["daemon"]["listen"] == f"127.0.0.1:{port}"
    assert shown["daemon"]["data_dir"] == str(tmp_path / "state")
    assert shown["transfer"]["buffer_size"] == 4 * MiB
    assert shown["transfer"]["write_depth"] == 2, "what the file leaves out keeps its default"
    assert (shown["ovf"]["stores"], shown["ovf"]["store_size"]) == (3, 8 * MiB)
    # The command line wins over the file.
    assert _show_config("--config", str(conf), "--listen", "127.0.0.1:1",
                        cwd=tmp_path)["daemon"]["listen"] == "127.0.0.1:1"
    control = tmp_path / "state" / "control.sock"
    proc = _serve("--config", str(conf), cwd=tmp_path, control=control, port=port)
    try:
        assert _get(port, "/info/")[0] == 200
        assert not (tmp_path / "sluice-data").exists()
        conn = UnixHTTPConnection(str(control))
        try:
            conn.request("GET", "/pool")
            sd = json.loads(conn.getresponse().read())["master_domain"]
            conn.close()
            conn.request("GET", f"/domains/{sd}/ovf-store/info")
            stores = json.loads(conn.getresponse().read())["stores"]
        finally:
            conn.close()
        assert len(stores) == 3, "the domain was created with the file's ovf.stores"
    finally:
        _stop(proc)


def _client_context(maximum: ssl.TLSVersion, cafile: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile)
    with warnings.catch_warnings():  # TLSv1 and TLSv1_1 are deprecated names
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = maximum
    # OpenSSL 3 refuses TLS 1.0 and 1.1 from security level 1 up; level 0
    # lets this client really offer them, so it is the server that refuses.
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def _permissive_server(cert: tuple[str, str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.load_cert_chain(*cert)
    return ctx


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> str | None:
    """The version both ends agreed on, in process; None if either refused."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname()[:2], timeout=10)
        peer, _ = listener.accept()
        peer.settimeout(10)
        result: list[str | None] = []

        def serve() -> None:
            try:
                with server_ctx.wrap_socket(peer, server_side=True) as s:
                    result.append(s.version())
            except (ssl.SSLError, OSError):
                result.append(None)
                peer.close()

        t = threading.Thread(target=serve)
        t.start()
        try:
            with client_ctx.wrap_socket(client, server_hostname="127.0.0.1") as c:
                version = c.version()
        except (ssl.SSLError, OSError):
            version = None
        finally:
            client.close()
        t.join(10)
    return version if result == [version] else None


@pytest.fixture(scope="module")
def tls_daemon(tmp_path_factory: pytest.TempPathFactory,
               cert: tuple[str, str]) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("tls") / "data", cert)
    yield d
    d.stop()


@pytest.mark.parametrize("maximum", ["TLSv1", "TLSv1_1"])
def test_tls_below_1_2_is_refused(tls_daemon: Daemon, cert: tuple[str, str],
                                  maximum: str) -> None:
    version = getattr(ssl.TLSVersion, maximum)
    client = _client_context(version, cert[0])
    if _handshake(_permissive_server(cert), client) is None:
        pytest.skip(f"this OpenSSL cannot offer {maximum} even at security level 0")
    # uvloop closes the connection without sending the protocol_version
    # alert; either way the handshake fails, before any HTTP.
    with pytest.raises(ssl.SSLError, match=r"UNEXPECTED_EOF|ALERT_PROTOCOL_VERSION"):
        _get(tls_daemon.port, "/info/", client)
    status, _ = _get(tls_daemon.port, "/info/", _client_context(ssl.TLSVersion.TLSv1_2, cert[0]))
    assert status == 200


def test_tls_context_minimum_is_1_2(cert: tuple[str, str]) -> None:
    """OpenSSL 3's default security level alone refuses TLS 1.1 (its
    handshake signatures use SHA-1), so the daemon test above would pass
    without the minimum; lower the level and the minimum still refuses."""
    ctx = tls_context(*cert)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    old = _client_context(ssl.TLSVersion.TLSv1_1, cert[0])
    if _handshake(_permissive_server(cert), old) is None:
        pytest.skip("this OpenSSL cannot offer TLSv1_1 even at security level 0")
    assert _handshake(ctx, old) is None
    assert _handshake(ctx, _client_context(ssl.TLSVersion.TLSv1_2, cert[0])) == "TLSv1.2"


def test_tls_1_2_and_1_3_are_accepted(tls_daemon: Daemon, cert: tuple[str, str]) -> None:
    for maximum in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = _client_context(maximum, cert[0])
        with socket.create_connection(("127.0.0.1", tls_daemon.port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            assert s.version() == maximum.name.replace("_", ".")
    assert _get(tls_daemon.port, "/info/", ssl.create_default_context(cafile=cert[0]))[0] == 200


# -- the engine's credential as a TLS client certificate


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _make_ca(directory: Path, name: str) -> tuple[str, str]:
    cert, key = str(directory / f"{name}-ca.pem"), str(directory / f"{name}-ca.key")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "2", "-subj", f"/CN={name} CA", "-keyout", key, "-out", cert,
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def _issue_client(directory: Path, ca: tuple[str, str], name: str) -> tuple[str, str]:
    cert, key = str(directory / f"{name}.pem"), str(directory / f"{name}.key")
    csr, ext = directory / f"{name}.csr", directory / f"{name}.ext"
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-subj", f"/CN={name}", "-keyout", key, "-out", str(csr))
    ext.write_text("basicConstraints = critical, CA:FALSE\n"
                   "keyUsage = critical, digitalSignature\n"
                   "extendedKeyUsage = clientAuth\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", ca[0], "-CAkey", ca[1],
             "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", cert)
    return cert, key


@dataclass
class EngineCA:
    daemon: Daemon
    server_cert: str
    engine: tuple[str, str]  # signed by the daemon's engine.ca
    stranger: tuple[str, str]  # signed by another CA

    def context(self, client: tuple[str, str] | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.server_cert)
        if client is not None:
            ctx.load_cert_chain(*client)
        return ctx


@pytest.fixture(scope="module")
def engine_ca(tmp_path_factory: pytest.TempPathFactory,
              cert: tuple[str, str]) -> Iterator[EngineCA]:
    pki = tmp_path_factory.mktemp("pki")
    ca = _make_ca(pki, "engine")
    other = _make_ca(pki, "other")
    conf = pki / "sluice.toml"
    conf.write_text(f'[engine]\nca = "{ca[0]}"\n')
    d = Daemon(tmp_path_factory.mktemp("engine-ca") / "data", cert, ["--config", str(conf)])
    yield EngineCA(d, cert[0], _issue_client(pki, ca, "engine"),
                   _issue_client(pki, other, "stranger"))
    d.stop()


def test_engine_client_certificate_is_the_credential(engine_ca: EngineCA) -> None:
    d, port = engine_ca.daemon, engine_ca.daemon.port
    with_cert = engine_ca.context(engine_ca.engine)
    status, body = _get(port, "/pool", with_cert)
    assert status == 200, body
    sd = json.loads(body)["master_domain"]
    tar, _ = build_tar(sd)
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=with_cert)
    try:
        conn.request("PUT", f"/domains/{sd}/ovf-store", body=tar)
        resp = conn.getresponse()
        answer = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 200, answer
    assert (answer["generation"], answer["tar_length"]) == (1, len(tar))
    # Neither certificate nor token: 401; the token alone still works.
    status, body = _get(port, "/pool", engine_ca.context())
    assert status == 401 and json.loads(body)["error"] == "unauthorized"
    status, _ = _get(port, "/pool", engine_ca.context(),
                     {"Authorization": f"Bearer {d.token}"})
    assert status == 200
    # Image clients present no certificate: the handshake does not ask for one.
    assert _get(port, "/info/", engine_ca.context())[0] == 200


def _ask_pool(port: int, ctx: ssl.SSLContext) -> tuple[str, bytes]:
    """GET /pool on a raw TLS socket: ("handshake", b"") if the handshake
    fails, else ("answer", what the server sent before closing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        except ssl.SSLError:
            return "handshake", b""
        with s:
            s.sendall(b"GET /pool HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            try:
                return "answer", s.recv(65536)
            except (ssl.SSLError, ConnectionResetError):
                return "answer", b""


def test_client_certificate_of_another_ca_is_refused(engine_ca: EngineCA) -> None:
    """The TLS layer refuses it (CERT_OPTIONAL verifies any certificate
    presented): never an HTTP answer, not even a 401.  With TLS 1.2 the
    handshake fails; with TLS 1.3 the client finishes its half before the
    server checks the certificate, then the server closes without a byte."""
    port = engine_ca.daemon.port
    for maximum, refused in [(ssl.TLSVersion.TLSv1_2, ("handshake", b"")),
                             (ssl.TLSVersion.TLSv1_3, ("answer", b""))]:
        ctx = engine_ca.context(engine_ca.stranger)
        ctx.maximum_version = maximum
        assert _ask_pool(port, ctx) == refused, maximum
        ctx = engine_ca.context(engine_ca.engine)
        ctx.maximum_version = maximum
        stage, answer = _ask_pool(port, ctx)
        assert stage == "answer" and answer.startswith(b"HTTP/1.1 200 "), (maximum, answer)


@pytest.mark.parametrize("host,tls,warned", [
    pytest.param("0.0.0.0", False, True, id="all-ipv4"),
    pytest.param("::", False, True, id="all-ipv6"),
    pytest.param("", False, True, id="empty-host"),
    pytest.param("192.0.2.7", False, True, id="an-address"),
    pytest.param("0.0.0.0", True, False, id="all-with-tls"),
    pytest.param("127.0.0.1", False, False, id="loopback"),
    pytest.param("::1", False, False, id="loopback-ipv6"),
    pytest.param("localhost", False, False, id="localhost"),
])
def test_plain_data_api_beyond_loopback_is_warned(host: str, tls: bool, warned: bool) -> None:
    from stream.server import exposure_warning

    warning = exposure_warning(host, tls)
    assert (warning is not None) == warned
    if warning:
        assert "without TLS" in warning


def test_loopback_daemon_does_not_warn(daemon: Daemon) -> None:
    assert "without TLS" not in daemon.read_log()
