"""``sluice-engine`` as a user runs it: a subprocess, exit codes, stdout and stderr."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine_client.model import VmStatus
from tests.stream.daemon import Daemon, free_port

from .ovfs import DiskSpec, vm_ovf, write


class Cli:
    def __init__(self, state: Path) -> None:
        self.state = state

    def __call__(self, *args: str, rc: int = 0) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([sys.executable, "-m", "engine_client", "--state-dir",
                            str(self.state), *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == rc, (r.returncode, r.stdout, r.stderr)
        if rc == 2:
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("sluice-engine: "), r.stderr
        return r

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "engine")


def test_a_new_cache_is_announced_once(cli: Cli) -> None:
    """A mistyped --state-dir made a new, empty cache silently: ``vm list``
    answered an empty table as if the engine knew no VM."""
    first = cli("vm", "list")
    assert first.stderr == f"sluice-engine: started a new engine cache in {cli.state}\n"
    assert (cli.state / "engine.db").exists()
    assert cli("vm", "list").stderr == ""


def test_vms_are_named_by_uuid_or_by_a_name_only_one_has(cli: Cli, tmp_path: Path) -> None:
    """``vm create NAME`` and ``vm list`` deal in names, but every other vm
    command took a UUID only ("VM 'web' is not a UUID")."""
    sd = str(uuid.uuid4())
    (tmp_path / "sd").mkdir()
    cli("domain", "add", sd, "--type", "file", "--location", str(tmp_path / "sd"))
    web, twin1, twin2 = (str(uuid.uuid4()) for _ in range(3))
    for vm, name in ((web, "web"), (twin1, "twin"), (twin2, "twin")):
        write(tmp_path / "in", vm, vm_ovf(vm, name, [DiskSpec(sd)]))
    cli("vm", "import", str(tmp_path / "in"))
    cli("vm", "set-status", "web", "up")
    cli("vm", "lock", "web")
    assert {e["uuid"]: e["status"] for e in cli.json("vm", "list")}[web] == VmStatus.IMAGE_LOCKED
    cli("vm", "unlock", web.upper())  # a UUID in any case, as before
    err = cli("vm", "lock", "twin", rc=2).stderr
    assert "2 VMs or templates are named 'twin'; give one's UUID" in err
    assert twin1 in err and twin2 in err
    assert "no VM or template is named 'nobody'" in cli("vm", "delete", "nobody", rc=2).stderr
    cli("vm", "delete", "web")
    assert {e["uuid"] for e in cli.json("vm", "list")} == {twin1, twin2}
    # 32 hex digits are a valid oVirt name, and parse as a UUID.
    hexname, other = "0123456789abcdef0123456789abcdef", str(uuid.uuid4())
    write(tmp_path / "in2", other, vm_ovf(other, hexname, [DiskSpec(sd)]))
    cli("vm", "import", str(tmp_path / "in2"))
    cli("vm", "lock", hexname)
    assert {e["uuid"]: e["status"] for e in cli.json("vm", "list")}[other] == \
        VmStatus.IMAGE_LOCKED
    unknown = str(uuid.uuid4())
    assert f"VM or template {unknown} is not known" in cli("vm", "lock", unknown,
                                                           rc=2).stderr


def test_feeding_the_cache(cli: Cli, tmp_path: Path) -> None:
    sd = str(uuid.uuid4())
    (tmp_path / "sd").mkdir()
    cli("domain", "add", sd, "--type", "file", "--location", str(tmp_path / "sd"))
    vm, tpl, disk = str(uuid.uuid4()), str(uuid.uuid4()), DiskSpec(sd)
    write(tmp_path / "in", vm, vm_ovf(vm, "web01", [disk]))
    write(tmp_path / "in", tpl, vm_ovf(tpl, "base", [DiskSpec(sd)], template=True))
    out = cli("vm", "import", str(tmp_path / "in")).stdout
    assert "web01" in out and "added" in out
    listed = cli.json("vm", "list")
    assert isinstance(listed, list)
    assert {(e["uuid"], e["kind"]) for e in listed} == {(vm, "vm"), (tpl, "template")}
    cli("vm", "lock", vm, "--disk", disk.disk)
    cli("vm", "unlock", vm, "--disk", disk.disk)
    cli("vm", "set-status", vm, "up")
    cli("vm", "set-disk", vm, disk.disk, "--shareable", "yes")
    cli("domain", "set-status", sd, "maintenance")
    token = tmp_path / "engine.token"
    token.write_text("s3cret\n")
    cli("host", "add", "h1", "http://127.0.0.1:54322", "--token-file", str(token),
        "--domain", sd)
    assert cli.json("host", "list") == [{"name": "h1", "url": "http://127.0.0.1:54322",
                                         "domains": [sd]}]
    # A new token or URL keeps the domains it serves; --no-domains drops them.
    token.write_text("rotated\n")
    cli("host", "add", "h1", "http://127.0.0.1:54323", "--token-file", str(token))
    assert cli.json("host", "list") == [{"name": "h1", "url": "http://127.0.0.1:54323",
                                         "domains": [sd]}]
    cli("host", "add", "h1", "http://127.0.0.1:54323", "--token", "t", "--no-domains")
    assert cli.json("host", "list")[0]["domains"] == []
    (domain,) = cli.json("domain", "list")
    assert domain["status"] == "Maintenance"
    assert cli("vm", "ovf", vm).stdout.startswith("<?xml")
    cli("vm", "delete", tpl)
    assert [e["uuid"] for e in cli.json("vm", "list")] == [vm]


@pytest.mark.parametrize("content, message", [
    pytest.param(b"not xml at all", "is not well-formed XML", id="not-xml"),
    pytest.param(b"<Envelope><Content><Name>x</Name></Content></Envelope>", "has no VM UUID",
                 id="no-uuid"),
])
def test_bad_ovf_file(cli: Cli, tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.ovf").write_bytes(content)
    r = cli("vm", "import", str(tmp_path / "in"), rc=2)
    assert message in r.stderr and "bad.ovf" in r.stderr
    assert cli.json("vm", "list") == []


def test_bad_input_messages(cli: Cli, tmp_path: Path) -> None:
    unknown = str(uuid.uuid4())
    vm = str(uuid.uuid4())
    write(tmp_path / "in", vm, vm_ovf(vm, "web01", [DiskSpec(unknown)]))
    r = cli("vm", "import", str(tmp_path / "in"), rc=2)
    assert f"is on storage domain {unknown}, which is not known" in r.stderr
    r = cli("vm", "lock", str(uuid.uuid4()), rc=2)
    assert "is not known" in r.stderr
    r = cli("vm", "set-status", vm, "Sleeping", rc=2)
    assert "unknown VM status 'Sleeping'; expected one of Unassigned, Down" in r.stderr
    r = cli("domain", "add", "not-a-uuid", "--type", "file", "--location", "/x", rc=2)
    assert "'not-a-uuid' is not a UUID" in r.stderr
    r = cli("host", "add", "h1", "http://x", "--token-file", str(tmp_path / "none"), rc=2)
    assert "cannot read the token file" in r.stderr
    (tmp_path / "binary.token").write_bytes(b"\xff\xfe\x00token")
    r = cli("host", "add", "h1", "http://x", "--token-file", str(tmp_path / "binary.token"),
            rc=2)
    assert "is not text; give the host's engine.token" in r.stderr
    (tmp_path / "disk.raw").write_bytes(b"\0" * 4096)
    r = subprocess.run([sys.executable, "-m", "engine_client", "checksum", "--block-size", "0",
                        str(tmp_path / "disk.raw")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "'0' is not a positive whole number" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = cli("domain", "set-status", unknown, "Active", rc=2)
    assert "is not known; add it with 'sluice-engine domain add'" in r.stderr
    (tmp_path / "bad.toml").write_text("[updater]\nintervall = 3\n")
    r = cli("--config", str(tmp_path / "bad.toml"), "vm", "list", rc=2)
    assert "unknown config option updater.intervall" in r.stderr


def test_update_once_with_the_host_down(cli: Cli, tmp_path: Path) -> None:
    sd = str(uuid.uuid4())
    (tmp_path / "sd").mkdir()
    cli("domain", "add", sd, "--type", "file", "--location", str(tmp_path / "sd"))
    cli("host", "add", "h1", f"http://127.0.0.1:{free_port()}", "--token", "t", "--domain", sd)
    vm = str(uuid.uuid4())
    write(tmp_path / "in", vm, vm_ovf(vm, "web01", [DiskSpec(sd)]))
    cli("vm", "import", str(tmp_path / "in"))
    r = cli("ovf", "update", "--once", rc=1)
    assert "entities: 1 processed" in r.stdout
    assert sd in r.stdout and "failed" in r.stdout and "cannot connect" in r.stdout
    r = cli("ovf", "update", "--once", "--json", rc=0)
    (d,) = json.loads(r.stdout)["domains"]
    assert d["outcome"] == "waiting"
    (s,) = cli.json("ovf", "status")
    assert s["outdated"] and s["failures"] == 1 and s["generation"] is None


def test_pool_push_and_status(cli: Cli, daemons: Callable[[], Daemon]) -> None:
    daemon = daemons()
    sd = Path(daemon.domain).name
    cli("domain", "add", sd, "--type", "file", "--location", daemon.domain.rstrip("/"))
    cli("host", "add", "h1", f"http://127.0.0.1:{daemon.port}", "--token-file",
        str(daemon.data_dir / "engine.token"), "--domain", sd)
    r = cli("pool", "status", rc=1)
    assert "out-of-sync" in r.stdout
    (h,) = cli.json("pool", "push")
    assert h["state"] == "pushed" and h["reported_version"] == h["expected_version"]
    (h,) = cli.json("pool", "status")
    assert h["state"] == "in-sync" and h["domains"][sd]["status"] == "Active"


def test_update_once_prints_the_pass(cli: Cli, tmp_path: Path,
                                     daemons: Callable[[], Daemon]) -> None:
    daemon = daemons()
    sd = Path(daemon.domain).name
    cli("domain", "add", sd, "--type", "file", "--location", daemon.domain.rstrip("/"))
    cli("host", "add", "h1", f"http://127.0.0.1:{daemon.port}", "--token-file",
        str(daemon.data_dir / "engine.token"), "--domain", sd)
    vms = [str(uuid.uuid4()) for _ in range(2)]
    for i, vm in enumerate(vms):
        write(tmp_path / "in", vm, vm_ovf(vm, f"web{i}", [DiskSpec(sd)]))
    cli("vm", "import", str(tmp_path / "in"))
    r = cli("ovf", "update", "--once")
    lines = r.stdout.splitlines()
    assert lines[0].startswith("entities: 2 processed, 0 skipped, 0 deletions; pass took ")
    assert lines[1].split() == ["DOMAIN", "RESULT", "HOST", "GENERATION", "OVFS", "BYTES",
                                "SENT", "ZSTD", "SECONDS", "DETAIL"]
    (row,) = lines[2:]
    domain, result, host, generation, ovfs, size, _sent, zstd, _seconds, detail = row.split()
    assert (domain, result, host, generation, ovfs, zstd, detail) == (
        sd, "updated", "h1", "1", "2", "yes", "-")
    # What the daemon holds is what the table says.
    status, body = daemon.request("GET", f"/domains/{sd}/ovf-store/info")
    assert status == 200
    valid = [s for s in json.loads(body)["stores"] if s["valid"]]
    newest = max(valid, key=lambda s: s["record"]["generation"])
    assert (newest["record"]["generation"], newest["record"]["tar_length"],
            newest["ovfs"]) == (1, int(size), 2)
    (s,) = cli.json("ovf", "status")
    assert not s["outdated"] and s["generation"] == 1 and sorted(s["stored"]) == sorted(vms)
    r = cli("ovf", "update", "--once")
    assert r.stdout.splitlines()[1:] == ["domains: none outdated"]


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
def test_a_reader_that_stops_early_is_no_error(tmp_path: Path, unbuffered: bool) -> None:
    """``sluice-engine domain list | head -0``: quiet, exit 141 as a command
    killed by SIGPIPE, not a BrokenPipeError traceback.  Buffered, as stdout
    to a pipe is in a user's shell, the error comes only at the flush."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    argv = [sys.executable, "-m", "engine_client", "--state-dir", str(tmp_path / "state")]
    subprocess.run([*argv, "domain", "add", str(uuid.uuid4()), "--type", "file",
                    "--location", str(tmp_path)], check=True, env=env)
    p = subprocess.Popen([*argv, "domain", "list"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # before the child gets to print
    with p.stderr:
        err = p.stderr.read()
    assert (p.wait(timeout=60), err) == (141, "")


def test_disk_list_ctrl_c(tmp_path: Path) -> None:
    """Ctrl-C while a host takes its time: one sentence, exit 1, no traceback."""
    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        argv = [sys.executable, "-m", "engine_client", "--state-dir", str(tmp_path / "state")]
        sd = str(uuid.uuid4())
        subprocess.run([*argv, "domain", "add", sd, "--type", "file", "--location",
                        str(tmp_path)], check=True)
        subprocess.run([*argv, "host", "add", "h1",
                        f"http://127.0.0.1:{silent.getsockname()[1]}", "--token", "t",
                        "--domain", sd], check=True)
        p = subprocess.Popen([*argv, "disk", "list"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        conn, _ = silent.accept()  # the request is on its way: the loop runs
        with conn:
            time.sleep(0.5)
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=60)
    assert (p.returncode, out, err) == (1, "", "sluice-engine: canceled; nothing was changed\n")
