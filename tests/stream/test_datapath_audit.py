"""Regressions from an audit of the image data path (PUT/GET /images).

Each test failed on the code before its fix.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from stream import upload
from stream.io import IO
from stream.state import IO_KEY
from volume._direct import shared_lock
from volume.buffers import is_aligned
from volume.memory import MemoryVolume

from .conftest import AddTicket, Client

MiB = 1 << 20

_ZSTD_MAGIC = struct.pack("<I", 0xFD2FB528)


def _raw_block(data: bytes, last: bool = True) -> bytes:
    """A zstd raw block (RFC 8878 §3.1.1.2): header then the bytes as is."""
    return (int(last) | len(data) << 3).to_bytes(3, "little") + data


async def _pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.timeout(30)
async def test_empty_bodies_do_not_hang_the_daemon(
    client: Client, image: Any, add_ticket: AddTicket
) -> None:
    """aiohttp gives every empty body the same EMPTY_PAYLOAD; once one
    request has read its end it answers (b"", True) forever, and the
    upload loop spun on it: the second Content-Length: 0 PUT of the
    process blocked the event loop for good."""
    path = image(data=b"x" * 4096)
    ticket = await add_ticket(path)
    for _ in range(3):
        resp = await client.put(f"/images/{ticket}", data=b"")
        assert resp.status == 200, await resp.text()
    resp = await client.put(f"/images/{ticket}", data=b"", headers={"Content-Encoding": "zstd"})
    assert resp.status == 400  # no frame at all
    assert path.read_bytes() == b"x" * 4096


def _lying_content_size() -> bytes:
    # Single segment, 1-byte Frame_Content_Size of 3, but 5 bytes of content.
    return _ZSTD_MAGIC + bytes([0x20, 3]) + _raw_block(b"hello")


def _bad_checksum() -> bytes:
    body = zstandard.ZstdCompressor(write_checksum=True).compress(b"data" * 1000)
    return body[:-4] + bytes(4)


def _corrupt_block() -> bytes:
    # Window 1 KiB, then a compressed block whose content is noise.
    header = (1 | 2 << 1 | 10 << 3).to_bytes(3, "little")
    return _ZSTD_MAGIC + bytes([0x00, 0x00]) + header + b"\xff" * 10


def _window_past_libzstd() -> bytes:
    return _ZSTD_MAGIC + bytes([0x00, (31 - 10) << 3]) + _raw_block(b"hello")


@pytest.mark.parametrize("body", [
    pytest.param(_lying_content_size(), id="lying-content-size"),
    pytest.param(_bad_checksum(), id="bad-content-checksum"),
    pytest.param(_corrupt_block(), id="corrupt-block"),
    pytest.param(_window_past_libzstd(), id="window-2-gib"),
])
async def test_invalid_zstd_content_is_a_400(
    client: Client, image: Any, add_ticket: AddTicket, body: bytes
) -> None:
    """The frame tracker only reads headers; what the decoder refuses is
    the client's fault too (it was a 500 "check logs")."""
    path = image(MiB)
    ticket = await add_ticket(path)
    resp = await client.put(f"/images/{ticket}", data=body, headers={"Content-Encoding": "zstd"})
    assert resp.status == 400
    assert "zstd" in await resp.text()
    resp = await client.put(f"/images/{ticket}", data=b"ok",
                            headers={"Content-Range": "bytes 0-1/*"})
    assert resp.status == 200


async def test_zstd_window_is_bounded(client: Client, image: Any, add_ticket: AddTicket) -> None:
    """A 10-byte frame asking for a 128 MiB window made the decoder allocate
    it (and a long-distance bomb then filled it): 128 MiB of RSS per upload.
    HTTP's zstd coding caps the window at 8 MiB (RFC 9659 §3)."""
    path = image(16 * MiB)
    ticket = await add_ticket(path)
    zstd = {"Content-Encoding": "zstd"}
    huge = _ZSTD_MAGIC + bytes([0x00, (27 - 10) << 3]) + _raw_block(b"hello")
    resp = await client.put(f"/images/{ticket}", data=huge, headers=zstd)
    assert resp.status == 400
    assert "memory" in await resp.text()
    assert path.read_bytes()[:5] == bytes(5)
    # 8 MiB, the most an HTTP zstd encoder may use, still decodes.
    data = os.urandom(MiB) + bytes(9 * MiB)
    params = zstandard.ZstdCompressionParameters.from_level(1, window_log=23)
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj()
    body = compressor.compress(data) + compressor.flush()
    assert zstandard.get_frame_parameters(body).window_size == 8 * MiB
    resp = await client.put(f"/images/{ticket}", data=body, headers=zstd)
    assert resp.status == 200, await resp.text()
    assert path.read_bytes()[:len(data)] == data


@pytest.mark.parametrize("zstd", [False, True], ids=["chunked", "zstd"])
@pytest.mark.parametrize("length", [1500, 500], ids=["longer", "shorter"])
async def test_content_range_end_bounds_bodies_of_unknown_length(
    client: Client, image: Any, add_ticket: AddTicket, zstd: bool, length: int
) -> None:
    """A Content-Range end was checked against Content-Length only: a
    chunked or zstd body longer than its range overwrote the bytes after
    it (a neighbour's range, with parallel writers) and got 200."""
    before = os.urandom(MiB)
    path = image(data=before)
    ticket = await add_ticket(path)
    data = os.urandom(length)
    headers = {"Content-Range": "bytes 1000-1999/*"}
    body: Any = _pieces(data[:700], data[700:])
    if zstd:
        headers["Content-Encoding"] = "zstd"
        body = zstandard.ZstdCompressor().compress(data)
    resp = await client.put(f"/images/{ticket}", data=body, headers=headers)
    assert resp.status == 400, await resp.text()
    assert "Content-Range covers 1000 bytes" in await resp.text()
    after = path.read_bytes()
    assert after[2000:] == before[2000:]  # nothing past the declared range
    assert after[:1000] == before[:1000]


async def test_content_range_end_past_the_ticket_is_refused_first(
    client: Client, image: Any, add_ticket: AddTicket
) -> None:
    """The body would fit, but the range it claims does not: refused
    before any byte is written (the claim was ignored, and 200)."""
    before = os.urandom(8192)
    path = image(data=before)
    ticket = await add_ticket(path)
    resp = await client.put(f"/images/{ticket}", data=_pieces(b"y" * 50),
                            headers={"Content-Range": "bytes 8100-8299/*"})
    assert resp.status == 416
    assert resp.headers["Content-Range"] == "bytes */8192"
    assert await resp.text() == (
        "Requested range 8100-8299 is past the ticket size (8192 bytes)\n")
    assert path.read_bytes() == before


async def test_a_timed_out_upload_keeps_its_buffer_until_the_write_ends(
    client: Client, cfg: Any, image: Any, add_ticket: AddTicket
) -> None:
    """The idle timeout fired while the upload waited for a buffer being
    written, which had already left the in-flight list: the buffer went
    back to the pool, and the next upload filled it with its own bytes
    while the worker was still writing it to this image."""
    cfg.transfer.write_depth = 1
    path = image(0)  # every write extends the file: under the inode's lock
    ticket = await add_ticket(path, size=4 * MiB, inactivity_timeout=1)
    assert (await client.options(f"/images/{ticket}")).status == 200  # opens the volume
    fd = os.open(path, os.O_RDONLY)
    try:
        lock = shared_lock(fd)
    finally:
        os.close(fd)
    if lock.block_size is None:
        pytest.skip("the volume is not O_DIRECT here: its writes take no lock")
    app = client.app
    assert app is not None
    io = app[IO_KEY]
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        with lock:  # the worker writing the first buffer waits for it
            writer.write(f"PUT /images/{ticket} HTTP/1.1\r\nHost: x\r\n"
                         f"Content-Length: {3 * MiB}\r\n\r\n".encode())
            writer.write(b"A" * (2 * MiB))  # two buffers, then the client stalls
            await writer.drain()
            answer = asyncio.ensure_future(reader.readline())
            done, _ = await asyncio.wait({answer}, timeout=2.5)
            # The idle timeout (1 s) has fired, but the first buffer is
            # still being written: no answer (and no buffer freed) before.
            assert not done
            assert not io._free.get(MiB)
        status = await answer
    finally:
        writer.close()
        await writer.wait_closed()
    assert status == b"HTTP/1.1 400 Bad Request\r\n"
    assert path.read_bytes() == b"A" * MiB
    assert len(io._free[MiB]) == 2  # both buffers back once the write ended


class _AlignmentRecorder(MemoryVolume):
    """Records writes whose memory is not aligned where the disk offset is."""

    def __init__(self, size: int, block_size: int) -> None:
        super().__init__(size, block_size=block_size)
        self.bs = block_size
        self.misaligned: list[int] = []

    def write(self, offset: int, buf: memoryview) -> None:
        skip = -offset % self.bs
        if len(buf) > skip and not is_aligned(buf[skip:], self.bs):
            self.misaligned.append(offset)
        super().write(offset, buf)


@pytest.mark.parametrize("depth", [1, 2])
async def test_plain_body_at_unaligned_offset_writes_aligned_buffers(
    tmp_path: Path, depth: int
) -> None:
    """The staging buffer of a plain body always started at index 0, so
    from an unaligned Content-Range offset every full buffer reached an
    O_DIRECT volume misaligned in memory: each one bounced through a
    scratch buffer (one more copy of the whole body) plus two
    read-modify-writes.  zstd bodies had the placement; plain ones not."""
    io = IO(2, MiB, 4)
    volume = _AlignmentRecorder(8 * MiB, 4096)
    data = os.urandom(5 * MiB + 123)
    chunks = [data[i:i + 100_000] for i in range(0, len(data), 100_000)]

    async def read() -> bytes:
        return chunks.pop(0) if chunks else b""

    try:
        written = await upload.receive(
            read, io, volume, offset=1000, limit=8 * MiB, zstd=False, hasher=None,
            check=lambda: None, idle_timeout=60, depth=depth,
        )
    finally:
        io.close()
    assert written == len(data)
    assert volume.misaligned == []
    out = memoryview(bytearray(len(data)))
    assert volume.readinto(1000, out) == len(data)
    assert out == data


class _WriteCounter(MemoryVolume):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.written = 0

    def write(self, offset: int, buf: memoryview) -> None:
        super().write(offset, buf)
        self.written += len(buf)


async def test_zstd_body_is_decoded_before_a_whole_staging_buffer_arrived() -> None:
    """Compressed bytes waited for a full staging buffer (4 MiB for OVF
    stores) before the worker decoded them, and the last one until the
    body ended: a store that shrinks 5 times had 21 MB decoded, checked
    and written after its last byte arrived."""
    io = IO(2, 4 * MiB, 8)
    volume = _WriteCounter(64 * MiB)
    # 16 random bytes in every 80: about 4.7 times smaller compressed.
    data = b"".join(os.urandom(16) + bytes(64) for _ in range(40 * MiB // 80))
    body = zstandard.ZstdCompressor(level=1).compress(data)
    assert len(body) > 3 * MiB
    step = 64 * 1024
    sent = 0
    early = -1

    async def read() -> bytes:
        nonlocal sent, early
        if sent == 2 * MiB:  # half a staging buffer of the old code
            for _ in range(500):
                if volume.written:
                    break
                await asyncio.sleep(0.01)
            early = volume.written
        piece = body[sent:sent + step]
        sent += len(piece)
        return piece

    try:
        written = await upload.receive(
            read, io, volume, offset=0, limit=64 * MiB, zstd=True, hasher=None,
            check=lambda: None, idle_timeout=60, buffer_size=4 * MiB,
        )
    finally:
        io.close()
    assert early > 0  # decoded and written while the body was still coming
    assert written == len(data)
    out = memoryview(bytearray(len(data)))
    assert volume.readinto(0, out) == len(data)
    assert out == data
