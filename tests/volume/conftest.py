"""Fixtures and helpers for the FileVolume tests (test_file*.py)."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from volume import FileVolume, open_volume
from volume import _linux as linux

OpenFile = Callable[..., FileVolume]


@pytest.fixture
def file_path(tmp_path: Path) -> str:
    """Where a test's file volume lives (not created)."""
    return str(tmp_path / "volume")


@pytest.fixture
def open_file() -> Iterator[OpenFile]:
    """``open_file(path, readonly=False, direct=True)``: a FileVolume closed at teardown."""
    volumes: list[FileVolume] = []

    def open_(path: str, readonly: bool = False, direct: bool = True) -> FileVolume:
        vol = open_volume(path, readonly, direct=direct)
        assert isinstance(vol, FileVolume)
        volumes.append(vol)
        return vol

    yield open_
    for vol in volumes:
        vol.close()


def write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def fallocate_without(*modes: int) -> tuple[list[int], Callable[[int, int, int, int], None]]:
    """A fallocate that fails with EOPNOTSUPP for ``modes``, and the modes it was asked."""
    calls: list[int] = []
    real = linux.fallocate

    def fake(fd: int, mode: int, offset: int, length: int) -> None:
        calls.append(mode)
        if mode in modes:
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        real(fd, mode, offset, length)

    return calls, fake


@pytest.fixture
def small_ext4(tmp_path: Path) -> Iterator[Path]:
    """A real 32 MiB ext4 (on a loop mount), which fills up and which, unlike
    tmpfs, keeps what a failed fallocate allocated; unmounted at teardown.
    Skips the test when mkfs or mounting is not possible."""
    image, mnt = tmp_path / "ext4.img", tmp_path / "ext4"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(32 << 20)
    for cmd in (["mkfs.ext4", "-q", "-F", str(image)],
                ["mount", "-o", "loop", str(image), str(mnt)]):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            pytest.skip(f"cannot make an ext4 filesystem: {e}")
        if r.returncode != 0:
            pytest.skip(f"cannot make an ext4 filesystem: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
