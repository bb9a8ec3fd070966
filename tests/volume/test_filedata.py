from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from volume import filedata
from volume.sd import VolumeInfo, new_volume

MiB = 1 << 20


def _info(tmp_path: Path, fmt: str, allocation: str, size: int = 4 * MiB) -> VolumeInfo:
    info = new_volume(str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4()), size,
                      format=fmt, allocation=allocation)
    return dataclasses.replace(info, path=str(tmp_path / info.vol_uuid))


@pytest.mark.parametrize("allocation", ["sparse", "preallocated"])
def test_raw_made_and_grown(tmp_path: Path, allocation: str) -> None:
    info = _info(tmp_path, "raw", allocation)
    filedata.make(info, None)
    st = os.stat(info.path)
    assert st.st_size == 4 * MiB
    assert (st.st_blocks * 512 >= 4 * MiB) == (allocation == "preallocated")
    with pytest.raises(FileExistsError):
        filedata.make(info, None)  # never over an existing file
    filedata.grow(info, 8 * MiB)
    st = os.stat(info.path)
    assert st.st_size == 8 * MiB
    assert (st.st_blocks * 512 >= 8 * MiB) == (allocation == "preallocated")


def test_qcow2_made_over_a_backing_volume_and_grown(tmp_path: Path) -> None:
    base = _info(tmp_path, "qcow2", "sparse")
    filedata.make(base, None)
    top = dataclasses.replace(_info(tmp_path, "qcow2", "sparse"), parent=base.vol_uuid)
    filedata.make(top, base)
    filedata.grow(top, 8 * MiB)
    found = json.loads(subprocess.run(
        ["qemu-img", "info", "--output=json", "-U", top.path], check=True,
        capture_output=True, text=True).stdout)
    assert found["format"] == "qcow2" and found["virtual-size"] == 8 * MiB
    assert found["backing-filename"] == base.vol_uuid  # a sibling, by its UUID
