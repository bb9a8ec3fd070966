"""Bad input to ``sluice-engine`` and ``sluice``, run as a user runs them:
one plain sentence on stderr and the documented exit status, never a
traceback; Ctrl-C (SIGINT) ends with 130."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.stream.daemon import free_port


def run(state: Path, *args: str, module: str = "engine_client",
        ) -> subprocess.CompletedProcess[str]:
    pre = ["--state-dir", str(state)] if module == "engine_client" else []
    return subprocess.run([sys.executable, "-m", module, *pre, *args], capture_output=True,
                          text=True, timeout=120)


def one_sentence(r: subprocess.CompletedProcess[str], rc: int, prog: str = "sluice-engine",
                 ) -> str:
    """The single stderr line of a failed command (after checking its exit status)."""
    assert r.returncode == rc, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: "), r.stderr
    return lines[0]


def host_down(state: Path, tmp_path: Path) -> str:
    """A file domain served by one host, at a closed port; the domain's UUID."""
    sd = str(uuid.uuid4())
    (tmp_path / "sd").mkdir()
    assert run(state, "domain", "add", sd, "--type", "file", "--location",
               str(tmp_path / "sd")).returncode == 0
    assert run(state, "host", "add", "h1", f"http://127.0.0.1:{free_port()}", "--token", "t",
               "--domain", sd).returncode == 0
    return sd


def test_checksum_block_size_too_large(tmp_path: Path) -> None:
    (tmp_path / "disk.raw").write_bytes(b"\1" * 4096)
    r = run(tmp_path / "engine", "checksum", "--block-size", str(1 << 50),
            str(tmp_path / "disk.raw"))
    assert "Block size out of allowed range" in one_sentence(r, 2)


def test_config_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe[updater]\n")
    r = run(tmp_path / "engine", "--config", str(tmp_path / "bin.toml"), "vm", "list")
    assert f"config file {tmp_path / 'bin.toml'} is not UTF-8 text" in one_sentence(r, 2)


def test_daemon_config_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe[daemon]\n")
    r = run(tmp_path, "serve", "--show-config", "--config", str(tmp_path / "bin.toml"),
            module="stream")
    assert f"config {tmp_path / 'bin.toml'} is not UTF-8 text" in one_sentence(r, 2, "sluice")


@pytest.mark.parametrize("content", [None, b"not a certificate\n"], ids=["missing", "garbage"])
@pytest.mark.parametrize("command", [("pool", "push"), ("ovf", "update", "--once")],
                         ids=["pool-push", "ovf-update"])
def test_bad_ca_file(tmp_path: Path, content: bytes | None, command: tuple[str, ...]) -> None:
    state = tmp_path / "engine"
    host_down(state, tmp_path)
    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_bytes(content)
    (tmp_path / "engine.toml").write_text(f'[http]\nca_file = "{ca}"\n')
    r = run(state, "--config", str(tmp_path / "engine.toml"), *command)
    assert f"config option http.ca_file: cannot load {ca}" in one_sentence(r, 2)


def test_upload_resume_into_a_malformed_disk(tmp_path: Path) -> None:
    state = tmp_path / "engine"
    sd = host_down(state, tmp_path)
    (tmp_path / "disk.raw").write_bytes(b"\1" * 4096)
    r = run(state, "disk", "upload", str(tmp_path / "disk.raw"), "--domain", sd,
            "--disk", "not-a-uuid")
    assert "disk 'not-a-uuid' is not a UUID" in one_sentence(r, 2)


def _handles(pid: int, sig: signal.Signals) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


@pytest.mark.parametrize("sig, rc", [(signal.SIGINT, 130), (signal.SIGTERM, 0)],
                         ids=["ctrl-c", "sigterm"])
@pytest.mark.parametrize("command", [("pool", "sync"), ("ovf", "update"), ("run",)],
                         ids=["pool-sync", "ovf-update", "run"])
def test_stopping_a_loop(tmp_path: Path, command: tuple[str, ...], sig: signal.Signals,
                         rc: int) -> None:
    state = tmp_path / "engine"
    host_down(state, tmp_path)
    with subprocess.Popen([sys.executable, "-m", "engine_client", "--state-dir", str(state),
                           *command], stderr=subprocess.PIPE, text=True) as p:
        try:
            deadline = time.monotonic() + 60
            while not _handles(p.pid, signal.SIGTERM):  # the loop is running
                assert p.poll() is None and time.monotonic() < deadline, p.communicate()
                time.sleep(0.05)
            p.send_signal(sig)
            _, err = p.communicate(timeout=30)
        finally:
            p.kill()
    assert p.returncode == rc, err
    assert "Traceback" not in err


def test_bad_download_targets_are_refused_before_the_host(tmp_path: Path) -> None:
    """Checked locally, before a ticket is opened on a host (here a down one)."""
    state = tmp_path / "engine"
    sd = host_down(state, tmp_path)
    disk = str(uuid.uuid4())
    for target, words in ((tmp_path / "no" / "such" / "x.raw", "is not a directory"),
                          (tmp_path, "is a directory")):
        r = run(state, "disk", "download", disk, str(target), "--domain", sd)
        assert words in one_sentence(r, 2)


def test_download_targets_that_are_not_regular_files_are_refused(tmp_path: Path) -> None:
    """A download replaces its file once verified: into a FIFO or through
    a symlink to one, it put a plain file in its place and exited 0 (as
    root, ``/dev/stdout`` became a 64 MiB file)."""
    state = tmp_path / "engine"
    sd = host_down(state, tmp_path)
    disk = str(uuid.uuid4())
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "link").symlink_to(fifo)
    for target in (fifo, tmp_path / "link"):
        r = run(state, "disk", "download", disk, str(target), "--domain", sd)
        assert "is not a regular file" in one_sentence(r, 2)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert (tmp_path / "link").is_symlink()
    # What os.stat cannot look through: one sentence too, not a traceback.
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "afile").write_text("")
    for target, words in ((tmp_path / "loop", "Too many levels of symbolic links"),
                          (tmp_path / "afile" / "x.raw", "Not a directory")):
        r = run(state, "disk", "download", disk, str(target), "--domain", sd)
        assert words in one_sentence(r, 2), r.stderr


def test_an_empty_file_is_no_disk_to_upload(tmp_path: Path) -> None:
    state = tmp_path / "engine"
    sd = host_down(state, tmp_path)
    (tmp_path / "empty.raw").write_bytes(b"")
    r = run(state, "disk", "upload", str(tmp_path / "empty.raw"), "--domain", sd)
    assert "is empty: there is no disk to upload" in one_sentence(r, 2)


def test_a_state_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    r = run(tmp_path / "state", "vm", "list")
    assert "is not a directory" in one_sentence(r, 1)
