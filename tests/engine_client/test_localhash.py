from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ovirt_imageio._internal import blkhash as imageio_blkhash

from engine_client.localhash import checksum

MiB = 1 << 20


@pytest.mark.parametrize("layout", ["dense", "sparse", "tail"])
def test_equals_imageio(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "img"
    with open(path, "wb") as f:
        if layout == "dense":
            f.write(os.urandom(9 * MiB + 5))
        else:
            f.truncate(13 * MiB + 7)
            f.seek(5 * MiB + 100)
            f.write(os.urandom(MiB))
            if layout == "tail":
                f.seek(13 * MiB)
                f.write(b"end")
    assert checksum(str(path)) == imageio_blkhash.checksum(str(path))


def test_cli(tmp_path: Path) -> None:
    path = tmp_path / "img"
    path.write_bytes(os.urandom(MiB))
    r = subprocess.run([sys.executable, "-m", "engine_client", "checksum", str(path),
                        "--algorithm", "xxh3_128"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["algorithm"] == "xxh3_128"
    r = subprocess.run([sys.executable, "-m", "engine_client", "checksum", str(tmp_path / "no")],
                       capture_output=True, text=True)
    assert r.returncode == 2  # bad input, as the README says
    assert r.stderr.startswith("sluice-engine: cannot read")
