"""Aligned buffers and the alignment test used to pick the direct I/O path."""

from __future__ import annotations

import mmap

import pytest

from volume.buffers import address, aligned_buffer, is_aligned


def test_aligned_buffer_is_page_aligned_and_zeroed() -> None:
    buf = aligned_buffer(3 * mmap.PAGESIZE)
    with memoryview(buf) as view:
        assert is_aligned(view, mmap.PAGESIZE)
        assert bytes(view) == bytes(3 * mmap.PAGESIZE)
    buf.close()


def test_aligned_buffer_refuses_empty() -> None:
    with pytest.raises(ValueError):
        aligned_buffer(0)


@pytest.mark.parametrize(("shift", "align", "expected"), [
    pytest.param(0, 4096, True, id="page-start"),
    pytest.param(512, 512, True, id="sector-inside-page"),
    pytest.param(512, 4096, False, id="sector-not-page"),
    pytest.param(1, 2, False, id="odd-byte"),
    pytest.param(1, 1, True, id="any-alignment"),
])
def test_is_aligned_on_slices(shift: int, align: int, expected: bool) -> None:
    buf = aligned_buffer(8192)
    with memoryview(buf) as view:
        assert is_aligned(view[shift:], align) is expected
    buf.close()


def test_readonly_bytes_report_their_real_address() -> None:
    data = b"x" * 10_000
    view = memoryview(data)
    addr = address(view)
    assert addr is not None
    assert address(view[3:]) == addr + 3
    assert is_aligned(view[(-addr) % 16 :], 16)
    assert not is_aligned(view[(-addr) % 16 + 1 :], 16)


def test_non_contiguous_is_not_aligned_but_empty_is() -> None:
    buf = aligned_buffer(4096)
    with memoryview(buf) as view:
        assert not is_aligned(view[::2], 2)
        assert is_aligned(view[1:1], 4096)
    buf.close()
