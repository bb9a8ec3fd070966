"""FileVolume zeroing and create(): the fallocate modes and their fallbacks.

Unsupported modes are injected at ``volume._linux.fallocate`` only, so the
real kernel does the rest and the file on disk is what gets checked."""

from __future__ import annotations

import errno
import os
from unittest import mock

import pytest

from tests.volume.conftest import OpenFile, fallocate_without, read_file, write_file
from volume import _linux as linux
from volume.base import Extent
from volume.errors import Conflict, NoSpace
from volume.file import create

KiB = 1024
MiB = 1024 * KiB
PUNCH = linux.FALLOC_FL_PUNCH_HOLE | linux.FALLOC_FL_KEEP_SIZE
ZERO_RANGE = linux.FALLOC_FL_ZERO_RANGE


def test_create_sparse(file_path: str) -> None:
    create(file_path, 4 * MiB, sparse=True)
    st = os.stat(file_path)
    assert (st.st_size, st.st_blocks) == (4 * MiB, 0)


@pytest.mark.parametrize("fallocate_works", [pytest.param(True, id="fallocate"),
                                             pytest.param(False, id="write-zeros")])
def test_create_preallocated(file_path: str, fallocate_works: bool) -> None:
    calls, fake = fallocate_without() if fallocate_works else fallocate_without(0)
    with mock.patch.object(linux, "fallocate", side_effect=fake):
        create(file_path, 4 * MiB + 100, sparse=False)
    assert calls == [0]
    st = os.stat(file_path)
    assert st.st_size == 4 * MiB + 100
    assert st.st_blocks * 512 >= 4 * MiB + 100
    assert read_file(file_path) == bytes(4 * MiB + 100)


def test_create_refuses_existing(file_path: str) -> None:
    write_file(file_path, b"keep")
    with pytest.raises(Conflict):
        create(file_path, MiB, sparse=True)
    assert read_file(file_path) == b"keep"


def test_create_no_space_removes_file(file_path: str) -> None:
    nospace = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with (
        mock.patch.object(linux, "fallocate", side_effect=nospace),
        pytest.raises(NoSpace, match=r"^no space left on the storage$"),
    ):
        create(file_path, MiB, sparse=False)
    assert not os.path.exists(file_path)


def allocated(file_path: str) -> int:
    return os.stat(file_path).st_blocks * 512


def test_zero_without_zero_range_punches_and_allocates(
    open_file: OpenFile, file_path: str
) -> None:
    write_file(file_path, b"x" * MiB)
    vol = open_file(file_path)
    calls, fake = fallocate_without(ZERO_RANGE)
    with mock.patch.object(linux, "fallocate", side_effect=fake):
        vol.zero(4 * KiB, 64 * KiB)
        assert calls == [ZERO_RANGE, PUNCH, 0]
        vol.zero(128 * KiB, 64 * KiB)
        assert calls[3:] == [PUNCH, 0], "ZERO_RANGE must not be retried"
    assert read_file(file_path) == b"x" * 4 * KiB + bytes(64 * KiB) + b"x" * 60 * KiB + bytes(
        64 * KiB) + b"x" * (MiB - 192 * KiB)
    assert allocated(file_path) >= MiB


def test_zero_without_fallocate_writes_zeros(
    open_file: OpenFile, file_path: str
) -> None:
    write_file(file_path, b"x" * 10_000)
    vol = open_file(file_path)
    calls, fake = fallocate_without(ZERO_RANGE, PUNCH, 0)
    with mock.patch.object(linux, "fallocate", side_effect=fake):
        vol.zero(100, 5_000, punch=True)
        assert calls == [PUNCH, ZERO_RANGE]
        assert not vol.capabilities.can_punch
        # Past EOF, unaligned: written zeros must leave the exact size.
        vol.zero(9_000, 6_001)
        assert calls == [PUNCH, ZERO_RANGE], "unsupported modes must not be retried"
    assert read_file(file_path) == b"x" * 100 + bytes(5_000) + b"x" * 3_900 + bytes(6_001)
    assert list(vol.extents()) == [Extent(0, 15_001, zero=False, hole=False)]


def test_punch_past_eof_grows_file_with_hole(
    open_file: OpenFile, file_path: str
) -> None:
    write_file(file_path, b"x" * 8 * KiB)
    vol = open_file(file_path)
    vol.zero(4 * KiB, 60 * KiB, punch=True)
    assert vol.size() == 64 * KiB
    assert list(vol.extents()) == [Extent(0, 4 * KiB, zero=False, hole=False),
                                   Extent(4 * KiB, 60 * KiB, zero=True, hole=True)]
    assert read_file(file_path) == b"x" * 4 * KiB + bytes(60 * KiB)


def test_zero_range_past_eof_grows_file(open_file: OpenFile, file_path: str) -> None:
    write_file(file_path, b"x" * 100)
    vol = open_file(file_path)
    vol.zero(50, 10_000)
    assert read_file(file_path) == b"x" * 50 + bytes(10_000)
