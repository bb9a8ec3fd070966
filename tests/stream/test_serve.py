"""End to end: ``sluice serve`` in a subprocess, driven by curl and by the
real ovirt-imageio client from PyPI (which needs qemu-img and qemu-nbd)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard
from ovirt_imageio import client as imageio_client

from .daemon import Daemon, make_cert

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
    import sys

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
