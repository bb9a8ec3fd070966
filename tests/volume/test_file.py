"""FileVolume specifics: growth past EOF, block size probing, extents, and
errno mapping.  Errors are injected only at the syscall (``os.*``)."""

from __future__ import annotations

import errno
import os
import random
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import pytest

from tests.volume.conftest import OpenFile, read_file, write_file
from volume import FileVolume
from volume.base import Extent
from volume.errors import NoSpace, VolumeError
from volume.file import create

KiB = 1024
MiB = 1024 * KiB


DIRECT = [pytest.param(True, id="direct"), pytest.param(False, id="buffered")]


@pytest.mark.parametrize("direct", DIRECT)
@pytest.mark.parametrize(("old_size", "offset", "length"), [
    pytest.param(0, 0, 100, id="empty-file-small-write"),
    pytest.param(10_000, 9_000, 500, id="last-block-rmw-inside-eof"),
    pytest.param(10_000, 9_900, 300, id="unaligned-tail-past-eof"),
    pytest.param(10_000, 12_000, 5, id="gap-after-eof"),
    pytest.param(10_000, 8 * KiB, 4 * KiB, id="aligned-write-past-unaligned-eof"),
    pytest.param(8 * KiB, 8 * KiB, 4 * KiB + 1, id="aligned-eof-unaligned-tail"),
])
def test_write_past_eof_leaves_exact_size(
    open_file: OpenFile, file_path: str, direct: bool,
    old_size: int, offset: int, length: int,
) -> None:
    old = random.Random(1).randbytes(old_size)
    write_file(file_path, old)
    data = random.Random(2).randbytes(length)
    vol = open_file(file_path, direct=direct)
    vol.write(offset, memoryview(data))
    end = max(old_size, offset + length)
    assert vol.size() == end
    expected = bytearray(old) + bytes(end - old_size)
    expected[offset : offset + length] = data
    assert read_file(file_path) == expected


def sysfs_logical_block_size(path: str) -> int | None:
    """What the kernel says of the device under ``path``'s filesystem."""
    dev = os.stat(path).st_dev
    base = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"
    # A whole disk has queue/ itself; a partition's is its parent's.
    for queue in (f"{base}/queue", f"{base}/../queue"):
        try:
            with open(f"{queue}/logical_block_size") as f:
                return int(f.read())
        except OSError:
            continue
    return None


def test_block_size_probed_on_data(open_file: OpenFile, file_path: str) -> None:
    write_file(file_path, b"x" * 8192)
    expected = sysfs_logical_block_size(file_path)
    if expected is None:
        pytest.skip("the test directory is not on a plain block device")
    assert open_file(file_path).capabilities.block_size == expected


@pytest.mark.parametrize("size", [pytest.param(0, id="empty"),
                                  pytest.param(MiB, id="all-holes")])
def test_block_size_without_data_is_4096(
    open_file: OpenFile, file_path: str, size: int
) -> None:
    create(file_path, size, sparse=True)
    assert open_file(file_path).capabilities.block_size == 4096


def test_volumes_on_one_file_agree_on_alignment(open_file: OpenFile, file_path: str) -> None:
    # The first open sees an empty file (4096); after data lands a fresh
    # probe could say 512.  Mixed sizes let a 4096-byte read-modify-write
    # undo another volume's lock-free 512-byte write, so both must agree.
    create(file_path, 0, sparse=True)
    first = open_file(file_path)
    write_file(file_path, b"x" * 8192)
    second = open_file(file_path)
    assert second.capabilities.block_size == first.capabilities.block_size == 4096


def test_buffered_has_block_size_1(open_file: OpenFile, file_path: str) -> None:
    write_file(file_path, b"x" * 8192)
    assert open_file(file_path, direct=False).capabilities.block_size == 1


def test_no_o_direct_falls_back_to_buffered(
    open_file: OpenFile, file_path: str
) -> None:
    write_file(file_path, b"x" * 8192)
    real_open = os.open

    def no_direct(p: str, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real_open(p, flags, mode)

    with mock.patch("os.open", side_effect=no_direct):
        vol = open_file(file_path)
    assert vol.capabilities.block_size == 1
    vol.write(3, memoryview(b"abc"))
    assert read_file(file_path)[:8] == b"xxxabcxx"


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_tmpfs_with_direct_requested(open_file: OpenFile) -> None:
    # tmpfs accepts O_DIRECT since Linux 6.6 without enforcing alignment, and
    # refuses it (EINVAL) before: either way the volume must just work.
    fd, shm = tempfile.mkstemp(dir="/dev/shm")
    os.close(fd)
    try:
        vol = open_file(shm)
        assert vol.capabilities.block_size in (1, 4096)
        vol.write(5, memoryview(b"tmpfs"))
        assert read_file(shm) == bytes(5) + b"tmpfs"
    finally:
        os.unlink(shm)


def test_extents_data_hole_data_hole(open_file: OpenFile, file_path: str) -> None:
    create(file_path, 2 * MiB, sparse=True)
    vol = open_file(file_path)
    vol.write(0, memoryview(b"a" * 4 * KiB))
    vol.write(MiB, memoryview(b"b" * 4 * KiB))
    assert list(vol.extents()) == [
        Extent(0, 4 * KiB, zero=False, hole=False),
        Extent(4 * KiB, MiB - 4 * KiB, zero=True, hole=True),
        Extent(MiB, 4 * KiB, zero=False, hole=False),
        Extent(MiB + 4 * KiB, MiB - 4 * KiB, zero=True, hole=True),
    ]


def test_extents_of_empty_file(open_file: OpenFile, file_path: str) -> None:
    create(file_path, 0, sparse=True)
    assert list(open_file(file_path).extents()) == []


def test_extents_without_seek_data_is_one_data_extent(
    open_file: OpenFile, file_path: str
) -> None:
    create(file_path, MiB, sparse=True)
    vol = open_file(file_path)
    with mock.patch("os.lseek", side_effect=OSError(errno.EINVAL, os.strerror(errno.EINVAL))):
        assert list(vol.extents()) == [Extent(0, MiB, zero=False, hole=False)]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_write_no_space(open_file: OpenFile, file_path: str, code: int) -> None:
    create(file_path, MiB, sparse=True)
    vol = open_file(file_path)
    with (
        mock.patch("os.pwrite", side_effect=OSError(code, os.strerror(code), file_path)),
        pytest.raises(NoSpace, match=r"^no space left on the storage$"),
    ):
        vol.write(0, memoryview(bytes(4 * KiB)))


@pytest.mark.parametrize(("syscall", "call"), [
    pytest.param("preadv", lambda v: v.readinto(0, memoryview(bytearray(4096))), id="read"),
    pytest.param("pwrite", lambda v: v.write(1, memoryview(b"x")), id="write-rmw"),
    pytest.param("fsync", lambda v: v.flush(), id="flush"),
])
def test_eio_is_volume_error_without_path(
    open_file: OpenFile, file_path: str, syscall: str,
    call: Callable[[FileVolume], object],
) -> None:
    write_file(file_path, b"x" * 8192)
    vol = open_file(file_path)
    eio = OSError(errno.EIO, os.strerror(errno.EIO), file_path)
    with mock.patch(f"os.{syscall}", side_effect=eio), pytest.raises(VolumeError) as info:
        call(vol)
    assert "Input/output error" in str(info.value)
    assert file_path not in str(info.value)


def test_flush_fsyncs_once(open_file: OpenFile, file_path: str) -> None:
    create(file_path, MiB, sparse=True)
    vol = open_file(file_path)
    vol.write(0, memoryview(b"x"))
    with mock.patch("os.fsync", wraps=os.fsync) as fsync:
        vol.flush()
    assert fsync.call_count == 1


@pytest.mark.parametrize("direct", DIRECT)
def test_tail_rmw_never_cuts_a_concurrent_extension(
    open_file: OpenFile, file_path: str, direct: bool
) -> None:
    # One thread writes a few bytes into even blocks just past EOF: a tail
    # read-modify-write that extends the file to the block boundary and then
    # truncates it back.  The other writes whole odd blocks, also past EOF.
    # If the truncate could run after the whole-block write, that block
    # would be cut off and the file would end short.
    create(file_path, 0, sparse=True)
    vol = open_file(file_path, direct=direct)
    bs, count = 4096, 1000
    barrier = threading.Barrier(2)

    def small_pieces() -> None:
        barrier.wait()
        for k in range(count):
            vol.write(2 * k * bs + 100, memoryview(b"s" * 100))

    def whole_blocks() -> None:
        barrier.wait()
        for k in range(count):
            vol.write((2 * k + 1) * bs, memoryview(b"W" * bs))

    with ThreadPoolExecutor(2) as pool:
        for f in [pool.submit(small_pieces), pool.submit(whole_blocks)]:
            f.result()
    assert vol.size() == 2 * count * bs
    even = bytes(100) + b"s" * 100 + bytes(bs - 200)
    assert read_file(file_path) == (even + b"W" * bs) * count
