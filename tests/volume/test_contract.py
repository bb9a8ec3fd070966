"""One suite for every backend: what the ``Volume`` protocol promises.

Each test fills the volume with random bytes first, so a write or zero that
disturbs a neighbouring byte (a bad read-modify-write) fails the full
read-back comparison.
"""

from __future__ import annotations

import itertools
import random
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import pytest

from tests.conftest import LoopDeviceFactory
from volume import MemoryVolume, Volume, aligned_buffer, open_volume
from volume.errors import Forbidden
from volume.file import create

KiB = 1024
MiB = 1024 * KiB
# Larger than one 1 MiB scratch step, so bounced I/O takes several steps.
SIZE = 4 * MiB
PATTERN = random.Random(1).randbytes(SIZE)


class Opener(Protocol):
    def __call__(self, readonly: bool = False) -> Volume: ...


BACKENDS = ["memory", "file-direct", "file-buffered", "block-512", "block-4096"]


@pytest.fixture(params=BACKENDS)
def opener(
    request: pytest.FixtureRequest, tmp_path: Path, loop_device: LoopDeviceFactory
) -> Iterator[Opener]:
    """Opens the backend's volume of SIZE bytes (again, for readonly=True)."""
    kind: str = request.param
    opened: list[Volume] = []
    cleanup: list[str] = []
    if kind == "memory":
        mem = MemoryVolume(SIZE)

        def open_memory(readonly: bool = False) -> Volume:
            return MemoryVolume(mem.getvalue(), readonly=True) if readonly else mem

        yield open_memory
        return
    if kind.startswith("block"):
        path = loop_device(SIZE, int(kind.split("-")[1]))
    else:
        # tmpfs for the buffered case when present: no O_DIRECT involved at all.
        base = "/dev/shm" if kind == "file-buffered" and Path("/dev/shm").is_dir() else None
        directory = tempfile.mkdtemp(dir=base) if base else str(tmp_path)
        if base:
            cleanup.append(directory)
        path = str(Path(directory) / "volume")
        create(path, SIZE, sparse=True)

    def open_path(readonly: bool = False) -> Volume:
        vol = open_volume(path, readonly, direct=kind != "file-buffered")
        opened.append(vol)
        return vol

    yield open_path
    for vol in opened:
        vol.close()
    for directory in cleanup:
        shutil.rmtree(directory)


@pytest.fixture
def vol(opener: Opener) -> Volume:
    vol = opener()
    vol.write(0, memoryview(PATTERN))
    return vol


def read_all(vol: Volume) -> bytes:
    buf = aligned_buffer(vol.size())
    with memoryview(buf) as view:
        assert vol.readinto(0, view) == vol.size()
        data = bytes(view)
    buf.close()
    return data


def shifted(data: bytes, shift: int) -> memoryview:
    """``data`` in memory that starts ``shift`` bytes after a page boundary."""
    buf = aligned_buffer(len(data) + shift + 1)
    view = memoryview(buf)[shift : shift + len(data)]
    view[:] = data
    return view


RANGES = [
    pytest.param(0, 4 * KiB, id="aligned-block"),
    pytest.param(42, 8 * KiB - 42, id="small-unaligned-offset"),
    pytest.param(4 * KiB - 100, 100 + 8 * KiB, id="unaligned-head"),
    pytest.param(8 * KiB, 4 * KiB + 100, id="unaligned-tail"),
    pytest.param(5000, 100, id="sub-block-middle"),
    pytest.param(512, 1 * KiB, id="sector-aligned-not-page-aligned"),
    pytest.param(3, 300_000, id="many-blocks-unaligned-both-ends"),
    pytest.param(7, 2 * MiB + 11, id="several-scratch-steps"),
    pytest.param(SIZE - 4 * KiB, 4 * KiB, id="last-block"),
    pytest.param(SIZE - 1, 1, id="last-byte"),
    pytest.param(0, SIZE, id="whole-volume"),
]
MEMORY = [pytest.param(0, id="aligned-memory"), pytest.param(1, id="unaligned-memory")]


@pytest.mark.parametrize("shift", MEMORY)
@pytest.mark.parametrize(("offset", "length"), RANGES)
def test_write_then_read(vol: Volume, offset: int, length: int, shift: int) -> None:
    data = random.Random(offset).randbytes(length)
    vol.write(offset, shifted(data, shift))
    expected = bytearray(PATTERN)
    expected[offset : offset + length] = data
    assert read_all(vol) == expected
    out = shifted(bytes(length), shift)
    assert vol.readinto(offset, out) == length
    assert out == data
    assert vol.size() == SIZE


@pytest.mark.parametrize(("offset", "length"), [
    pytest.param(SIZE - 100, 200, id="straddling-end"),
    pytest.param(SIZE, 10, id="at-end"),
    pytest.param(SIZE - 4 * KiB, 8 * KiB, id="aligned-straddling-end"),
])
def test_read_at_end_is_short(vol: Volume, offset: int, length: int) -> None:
    out = shifted(bytes(length), 1)
    n = vol.readinto(offset, out)
    assert n == max(0, SIZE - offset)
    assert out[:n] == PATTERN[offset:]


@pytest.mark.parametrize("punch", [pytest.param(False, id="allocate"),
                                   pytest.param(True, id="punch")])
@pytest.mark.parametrize(("offset", "length"), RANGES)
def test_zero(vol: Volume, offset: int, length: int, punch: bool) -> None:
    vol.zero(offset, length, punch=punch)
    expected = bytearray(PATTERN)
    expected[offset : offset + length] = bytes(length)
    assert read_all(vol) == expected
    assert vol.size() == SIZE


def check_extents_cover(vol: Volume) -> list[tuple[int, int, bool, bool]]:
    extents = list(vol.extents())
    assert extents[0].start == 0
    assert extents[-1].end == vol.size()
    for a, b in itertools.pairwise(extents):
        assert a.end == b.start, "extents must be contiguous"
        assert (a.zero, a.hole) != (b.zero, b.hole), "equal neighbours must be merged"
    return [(e.start, e.length, e.zero, e.hole) for e in extents]


def test_extents_after_punch(vol: Volume) -> None:
    vol.zero(64 * KiB, 128 * KiB, punch=True)
    found = check_extents_cover(vol)
    if not vol.capabilities.real_extents:
        assert found == [(0, SIZE, False, False)]
        return
    # 4 KiB-aligned, so whole filesystem blocks (ext4, tmpfs) are deallocated.
    assert found == [
        (0, 64 * KiB, False, False),
        (64 * KiB, 128 * KiB, True, True),
        (192 * KiB, SIZE - 192 * KiB, False, False),
    ]


def test_implements_the_protocol(vol: Volume) -> None:
    assert isinstance(vol, Volume)
    caps = vol.capabilities
    assert caps.block_size in (1, 512, 4096)
    assert caps.max_readers >= 1 and caps.max_writers >= 1


def test_extents_of_written_volume_are_data(vol: Volume) -> None:
    assert check_extents_cover(vol) == [(0, SIZE, False, False)]


def test_flush_makes_data_visible_to_a_new_open(opener: Opener, vol: Volume) -> None:
    vol.write(100, memoryview(b"flushed"))
    vol.flush()
    again = opener(readonly=True)
    out = bytearray(7)
    assert again.readinto(100, memoryview(out)) == 7
    assert out == b"flushed"


def test_readonly_refuses_writes(opener: Opener, vol: Volume) -> None:
    ro = opener(readonly=True)
    assert ro.readonly
    assert not vol.readonly
    with pytest.raises(Forbidden):
        ro.write(0, memoryview(b"x"))
    with pytest.raises(Forbidden):
        ro.zero(0, 4096)
    with pytest.raises(Forbidden):
        ro.zero(0, 4096, punch=True)
    assert read_all(ro) == PATTERN


@pytest.mark.parametrize("volumes", [
    pytest.param(1, id="one-volume"),
    # Two tickets on one image open two volumes: the read-modify-write lock
    # must be per file or device, not per volume.
    pytest.param(2, id="two-volumes-one-storage"),
])
def test_concurrent_writers_on_two_halves_of_blocks(
    opener: Opener, vol: Volume, volumes: int
) -> None:
    # Halves of a block are unaligned whenever block_size > 1, so each write
    # is a read-modify-write of the same block as the other thread's.
    other = vol if volumes == 1 else opener()
    bs = max(vol.capabilities.block_size, 4096)
    half = bs // 2 + 1
    blocks = 256
    left = random.Random(2).randbytes(half)
    right = random.Random(3).randbytes(bs - half)
    barrier = threading.Barrier(2)

    def writer(target: Volume, start: int, data: bytes) -> None:
        barrier.wait()
        for i in range(blocks):
            target.write(i * bs + start, memoryview(data))

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(writer, vol, 0, left), pool.submit(writer, other, half, right)]
        for f in futures:
            f.result()
    expected = bytearray(PATTERN)
    expected[: blocks * bs] = (left + right) * blocks
    assert read_all(vol) == expected
