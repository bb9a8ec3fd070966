"""MemoryVolume's bookkeeping of data, zero and hole runs."""

from __future__ import annotations

import random

import pytest

from volume import MemoryVolume
from volume.base import Extent, read_exactly
from volume.errors import Forbidden, VolumeError

DATA, ZERO, HOLE = (False, False), (True, False), (True, True)


def runs(kinds: list[tuple[bool, bool]]) -> list[Extent]:
    """The merged extents of a per-byte list of (zero, hole) kinds."""
    found: list[Extent] = []
    for i, (zero, hole) in enumerate(kinds):
        if found and (found[-1].zero, found[-1].hole) == (zero, hole):
            last = found.pop()
            found.append(Extent(last.start, last.length + 1, zero, hole))
        else:
            found.append(Extent(i, 1, zero, hole))
    return found


def test_new_volume_is_one_hole() -> None:
    assert list(MemoryVolume(100).extents()) == [Extent(0, 100, zero=True, hole=True)]


def test_initial_bytes_are_data() -> None:
    vol = MemoryVolume(b"abc")
    assert list(vol.extents()) == [Extent(0, 3, zero=False, hole=False)]
    assert vol.getvalue() == b"abc"


def test_write_past_end_leaves_hole_gap() -> None:
    vol = MemoryVolume(b"ab")
    vol.write(5, memoryview(b"cd"))
    assert vol.getvalue() == b"ab\0\0\0cd"
    assert list(vol.extents()) == [Extent(0, 2, False, False), Extent(2, 3, True, True),
                                   Extent(5, 2, False, False)]


@pytest.mark.parametrize("seed", range(20))
def test_extents_match_a_byte_model(seed: int) -> None:
    rnd = random.Random(seed)
    size = 64
    vol = MemoryVolume(size)
    model = [HOLE] * size
    for _ in range(30):
        start = rnd.randrange(size + 8)
        length = rnd.randrange(1, 16)
        op = rnd.choice(["write", "zero", "punch"])
        if op == "write":
            vol.write(start, memoryview(b"x" * length))
        else:
            vol.zero(start, length, punch=op == "punch")
        kind = {"write": DATA, "zero": ZERO, "punch": HOLE}[op]
        if start + length > len(model):
            model.extend([HOLE] * (start + length - len(model)))
        model[start : start + length] = [kind] * length
        assert list(vol.extents()) == runs(model), f"after {op} {start}+{length}"
    assert vol.size() == len(model)


def test_readonly_refuses_writes() -> None:
    vol = MemoryVolume(b"abc", readonly=True)
    with pytest.raises(Forbidden):
        vol.write(0, memoryview(b"x"))
    with pytest.raises(Forbidden):
        vol.zero(0, 1, punch=True)
    assert vol.getvalue() == b"abc"


def test_capabilities_are_what_was_asked() -> None:
    caps = MemoryVolume(10, block_size=512, max_writers=2).capabilities
    assert (caps.block_size, caps.max_writers, caps.real_extents) == (512, 2, True)


def test_read_exactly_fills_or_names_where_the_volume_ends() -> None:
    vol = MemoryVolume(b"0123456789")
    buf = bytearray(4)
    read_exactly(vol, 3, memoryview(buf))
    assert buf == b"3456"
    with pytest.raises(VolumeError, match="the image ended at 10, before 12"):
        read_exactly(vol, 8, memoryview(bytearray(4)), "image")
