"""BlockVolume specifics, on real loop devices with 512 and 4096-byte sectors."""

from __future__ import annotations

import errno
import fcntl
import os
import random
from collections.abc import Callable, Iterator
from unittest import mock

import pytest

from tests.conftest import LoopDeviceFactory
from volume import BlockVolume, open_volume
from volume import _linux as linux
from volume.errors import OutOfRange, VolumeError

MiB = 1024 * 1024
SIZE = 2 * MiB
PATTERN = random.Random(7).randbytes(SIZE)
PUNCH = linux.FALLOC_FL_PUNCH_HOLE | linux.FALLOC_FL_KEEP_SIZE
ZERO_RANGE = linux.FALLOC_FL_ZERO_RANGE | linux.FALLOC_FL_KEEP_SIZE


@pytest.fixture(params=[512, 4096], ids=["sector-512", "sector-4096"])
def sector(request: pytest.FixtureRequest) -> int:
    value: int = request.param
    return value


@pytest.fixture
def device(loop_device: LoopDeviceFactory, sector: int) -> str:
    return loop_device(SIZE, sector)


@pytest.fixture
def vol(device: str) -> Iterator[BlockVolume]:
    vol = open_volume(device)
    assert isinstance(vol, BlockVolume)
    vol.write(0, memoryview(PATTERN))
    yield vol
    vol.close()


def read_device(device: str) -> bytes:
    with open(device, "rb") as f:
        return f.read()


def test_geometry_comes_from_the_device(vol: BlockVolume, sector: int) -> None:
    assert vol.size() == SIZE
    caps = vol.capabilities
    assert caps.block_size == sector
    assert (caps.max_readers, caps.max_writers, caps.real_extents) == (8, 8, False)


def test_direct_io_even_when_not_asked(device: str, sector: int) -> None:
    vol = open_volume(device, direct=False)
    try:
        assert isinstance(vol, BlockVolume)
        assert vol.capabilities.block_size == sector
        # The volume owns its descriptor; the only way to see its flags.
        assert fcntl.fcntl(vol._fd, fcntl.F_GETFL) & os.O_DIRECT
    finally:
        vol.close()


@pytest.mark.parametrize(("offset", "length"), [
    pytest.param(SIZE - 10, 11, id="straddling-end-unaligned"),
    pytest.param(SIZE - 4096, 8192, id="straddling-end-aligned"),
    pytest.param(SIZE, 1, id="at-end"),
])
def test_write_past_end_is_out_of_range(
    vol: BlockVolume, device: str, offset: int, length: int
) -> None:
    with pytest.raises(OutOfRange) as info:
        vol.write(offset, memoryview(b"y" * length))
    assert info.value.size == SIZE
    assert read_device(device) == PATTERN, "nothing may be written before refusing"
    with pytest.raises(OutOfRange):
        vol.zero(offset, length)


def test_zero_unaligned_range_writes_edges(vol: BlockVolume, device: str) -> None:
    vol.zero(100, 10_000, punch=True)
    assert read_device(device) == PATTERN[:100] + bytes(10_000) + PATTERN[10_100:]


def fallocate_unsupported() -> tuple[list[int], Callable[[int, int, int, int], None]]:
    calls: list[int] = []

    def fake(fd: int, mode: int, offset: int, length: int) -> None:
        calls.append(mode)
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    return calls, fake


@pytest.mark.parametrize(("punch", "mode"), [pytest.param(True, PUNCH, id="punch"),
                                             pytest.param(False, ZERO_RANGE, id="allocate")])
def test_zero_falls_back_to_blkzeroout(
    vol: BlockVolume, device: str, punch: bool, mode: int
) -> None:
    calls, fake = fallocate_unsupported()
    with (
        mock.patch.object(linux, "fallocate", side_effect=fake),
        mock.patch.object(linux, "blkzeroout", wraps=linux.blkzeroout) as zeroout,
    ):
        vol.zero(64 * 1024, 128 * 1024, punch=punch)
        vol.zero(512 * 1024, 64 * 1024, punch=punch)
    assert calls == [mode], "an unsupported mode is tried once"
    assert zeroout.call_count == 2
    assert vol.capabilities.can_punch is not punch
    expected = bytearray(PATTERN)
    expected[64 * 1024 : 192 * 1024] = bytes(128 * 1024)
    expected[512 * 1024 : 576 * 1024] = bytes(64 * 1024)
    assert read_device(device) == expected


def test_blkzeroout_eio_is_volume_error(vol: BlockVolume, device: str) -> None:
    _, fake = fallocate_unsupported()
    eio = OSError(errno.EIO, os.strerror(errno.EIO))
    with (
        mock.patch.object(linux, "fallocate", side_effect=fake),
        mock.patch.object(linux, "blkzeroout", side_effect=eio),
        pytest.raises(VolumeError, match=r"^storage error during zero: Input/output error$")
        as info,
    ):
        vol.zero(0, 4096)
    assert device not in str(info.value)


def test_extents_is_one_data_extent(vol: BlockVolume) -> None:
    vol.zero(0, 64 * 1024, punch=True)
    assert [(e.start, e.length, e.zero, e.hole) for e in vol.extents()] == [
        (0, SIZE, False, False)
    ]
