from __future__ import annotations

import io
import os
from typing import Any

import pytest
import zstandard

from stream.wire.zstdframe import BadZstd, FrameTracker

DATA = os.urandom(300_000) + bytes(2 << 20) + b"abc" * 50_000


def feed(data: bytes, step: int) -> FrameTracker:
    t = FrameTracker()
    for i in range(0, len(data), step):
        t.feed(data[i : i + step])
    return t


@pytest.mark.parametrize("kwargs", [
    pytest.param({}, id="default"),
    pytest.param({"write_checksum": True}, id="checksum"),
    pytest.param({"write_content_size": False}, id="no-size"),
])
@pytest.mark.parametrize("step", [1, 3, 4096, 1 << 30])
def test_whole_frames_complete(kwargs: dict[str, Any], step: int) -> None:
    body = zstandard.ZstdCompressor(level=1, **kwargs).compress(DATA)
    assert feed(body, step).complete
    assert not feed(body[:-1], step).complete
    assert not feed(body[: len(body) // 2], step).complete


def test_streamed_and_multi_frame() -> None:
    buf = io.BytesIO()
    w = zstandard.ZstdCompressor().stream_writer(buf, closefd=False)
    w.write(DATA)
    w.flush(zstandard.FLUSH_FRAME)
    w.write(b"more")
    w.flush(zstandard.FLUSH_FRAME)
    t = feed(buf.getvalue(), 1000)
    assert t.complete and t.frames == 2


def test_skippable_frame() -> None:
    skippable = (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"12345"
    body = skippable + zstandard.ZstdCompressor().compress(b"x")
    assert feed(body, 2).complete


def test_not_zstd() -> None:
    with pytest.raises(BadZstd):
        FrameTracker().feed(b"GIF89a..")


def test_empty_is_not_complete() -> None:
    assert not FrameTracker().complete
