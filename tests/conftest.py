"""Fixtures every test package may use.  Package-specific ones live beside
their tests (``tests/stream/conftest.py``)."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

log = logging.getLogger(__name__)

_SKIP = "loop devices need root and a kernel that allows losetup: "


class LoopDeviceFactory(Protocol):
    def __call__(self, size_bytes: int, sector_size: int = 512) -> str: ...


@pytest.fixture
def loop_device(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[LoopDeviceFactory]:
    """A factory of loop devices: ``loop_device(size_bytes, sector_size=512) -> path``.

    Each device is backed by a sparse file under ``tmp_path``, uses direct
    I/O on it (so the sector size is real, not emulated by the page cache)
    and is detached at teardown.  Skips the test when not root or when
    losetup fails (no free device, a container without loop-control...).
    """
    devices: list[str] = []

    def make(size_bytes: int, sector_size: int = 512) -> str:
        request.node.add_marker(pytest.mark.root)
        if os.geteuid() != 0:
            pytest.skip(_SKIP + "not running as root")
        backing = tmp_path / f"loop-backing-{len(devices)}"
        with open(backing, "wb") as f:
            f.truncate(size_bytes)
        cmd = ["losetup", "--find", "--show", "--sector-size", str(sector_size),
               "--direct-io=on", str(backing)]
        reason = ""
        # --find then attach is not atomic: a concurrent losetup (another
        # test run) can take the same free device, so try a few times.
        for _ in range(3):
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            except (OSError, subprocess.TimeoutExpired) as e:
                pytest.skip(_SKIP + str(e))
            if res.returncode == 0:
                device = res.stdout.strip()
                devices.append(device)
                return device
            reason = res.stderr.strip() or f"losetup exited with {res.returncode}"
        pytest.skip(_SKIP + reason)

    yield make

    for device in devices:
        res = subprocess.run(["losetup", "--detach", device], capture_output=True, text=True)
        if res.returncode != 0:
            log.error("cannot detach %s: %s", device, res.stderr.strip())


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB tmpfs (it fills up: ENOSPC), unmounted at teardown;
    skips the test when mounting is not permitted."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mounting a 4 MiB tmpfs needs root: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
