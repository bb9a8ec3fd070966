"""open_volume: the backend follows what the opened descriptor is, never the name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import LoopDeviceFactory
from volume import BlockVolume, FileVolume, open_volume
from volume.errors import InvalidRequest, NotFound


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("readonly", [pytest.param(True, id="readonly"),
                                      pytest.param(False, id="readwrite")])
@pytest.mark.parametrize("kind", ["directory", "fifo", "char-device"])
def test_refuses_other_file_types(tmp_path: Path, kind: str, readonly: bool) -> None:
    if kind == "directory":
        path = str(tmp_path)
    elif kind == "fifo":
        # Opening a FIFO read-only blocks until a writer comes, unless
        # open_volume takes care: this test would hang (and time out).
        path = str(tmp_path / "fifo")
        os.mkfifo(path)
    else:
        path = "/dev/null"
    before = open_fds()
    with pytest.raises(InvalidRequest) as info:
        open_volume(path, readonly)
    assert path not in str(info.value)
    assert open_fds() == before, "the descriptor must be closed"


def test_missing_path_is_not_found(tmp_path: Path) -> None:
    path = str(tmp_path / "missing")
    with pytest.raises(NotFound) as info:
        open_volume(path)
    assert path not in str(info.value)


def test_backend_is_chosen_by_fstat_not_name(
    tmp_path: Path, loop_device: LoopDeviceFactory
) -> None:
    device = loop_device(1024 * 1024)
    disguised = tmp_path / "disk.img"
    disguised.symlink_to(device)
    regular = tmp_path / "sdb"
    regular.write_bytes(b"x" * 4096)
    block = open_volume(str(disguised))
    file = open_volume(str(regular))
    try:
        assert isinstance(block, BlockVolume)
        assert isinstance(file, FileVolume)
    finally:
        block.close()
        file.close()
