"""The image API through a real aiohttp server, on real files."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import xxhash
import zstandard
from ovirt_imageio._internal import blkhash as imageio_blkhash

from .conftest import AddTicket, Client

MiB = 1 << 20


def random_data(size: int) -> bytes:
    return os.urandom(size)


async def chunks(data: bytes, step: int = 100_000) -> Any:
    for i in range(0, len(data), step):
        yield data[i : i + step]


async def test_put_then_get_round_trip(client: Client, image: Any, add_ticket: AddTicket) -> None:
    data = random_data(3 * MiB + 4097)
    path = image(len(data))
    ticket = await add_ticket(path)
    resp = await client.put(f"/images/{ticket}", data=data)
    assert resp.status == 200
    assert path.read_bytes() == data
    resp = await client.get(f"/images/{ticket}")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(len(data))
    assert await resp.read() == data


@pytest.mark.parametrize("offset,length", [
    pytest.param(0, 4096, id="aligned-block"),
    pytest.param(42, 8192 - 42, id="small-unaligned-offset"),
    pytest.param(4096, 2 * MiB + 1, id="unaligned-tail"),
    pytest.param(1 * MiB - 3, 1 * MiB + 7, id="across-buffer-boundary"),
])
async def test_put_content_range(
    client: Client, image: Any, add_ticket: AddTicket, offset: int, length: int
) -> None:
    size = 4 * MiB
    before = random_data(size)
    path = image(data=before)
    ticket = await add_ticket(path)
    data = random_data(length)
    resp = await client.put(
        f"/images/{ticket}", data=data,
        headers={"Content-Range": f"bytes {offset}-{offset + length - 1}/*"},
    )
    assert resp.status == 200, await resp.text()
    expected = before[:offset] + data + before[offset + length:]
    assert path.read_bytes() == expected


@pytest.mark.parametrize("depth", [1, 2, 3])
async def test_writes_in_flight_land_in_place(
    client: Client, cfg: Any, image: Any, add_ticket: AddTicket, depth: int
) -> None:
    """Several full buffers written at once, each at its own offset: the
    bytes land where they belong, at an unaligned offset too."""
    cfg.transfer.write_depth = depth
    size = 12 * MiB
    before = random_data(size)
    path = image(data=before)
    ticket = await add_ticket(path)
    offset, data = 1000, random_data(9 * MiB + 12345)  # nine 1 MiB buffers and a tail
    resp = await client.put(
        f"/images/{ticket}", data=chunks(data, 77_777),
        headers={"Content-Range": f"bytes {offset}-{offset + len(data) - 1}/*"},
    )
    assert resp.status == 200, await resp.text()
    assert path.read_bytes() == before[:offset] + data + before[offset + len(data):]


async def test_chunked_upload(client: Client, image: Any, add_ticket: AddTicket) -> None:
    data = random_data(2 * MiB + 12345)
    path = image(len(data))
    ticket = await add_ticket(path)
    resp = await client.put(f"/images/{ticket}", data=chunks(data))
    assert resp.status == 200, await resp.text()
    assert path.read_bytes() == data


async def test_chunked_upload_past_ticket_size_is_cut_off(
    client: Client, image: Any, add_ticket: AddTicket
) -> None:
    size = 2 * MiB
    path = image(size)
    ticket = await add_ticket(path)
    resp = await client.put(f"/images/{ticket}", data=chunks(random_data(size + MiB)))
    assert resp.status == 416
    assert resp.headers["Content-Range"] == f"bytes */{size}"
    # The first byte past the end, not where the refused chunk began.
    assert await resp.text() == (
        f"upload goes past the end of the ticket ({size} bytes) at offset {size}\n")
    assert os.path.getsize(path) == size  # nothing beyond the size was written


@pytest.mark.parametrize("zstd", [False, True], ids=["chunked", "zstd"])
@pytest.mark.parametrize("start", [0, 1000, 2000])
async def test_upload_past_the_ticket_names_the_first_byte_past_it(
    client: Client, image: Any, add_ticket: AddTicket, zstd: bool, start: int
) -> None:
    """It named the request's start offset ("at offset 0"), not where the
    body overflowed."""
    before = random_data(1024)
    path = image(data=before)
    ticket = await add_ticket(path)
    body, headers = b"z" * 1500, {"Content-Range": f"bytes {start}-*/*"}
    if zstd:
        body = zstandard.ZstdCompressor().compress(body)
        headers["Content-Encoding"] = "zstd"
    resp = await client.put(f"/images/{ticket}", data=chunks(body), headers=headers)
    assert resp.status == 416
    assert resp.headers["Content-Range"] == "bytes */1024"
    if start > 1024:  # refused before the body is read
        assert await resp.text() == (
            f"Requested offset {start} is past the ticket size (1024 bytes)\n")
    else:
        assert await resp.text() == (
            "upload goes past the end of the ticket (1024 bytes) at offset 1024\n")
    assert path.read_bytes() == before


@pytest.mark.parametrize("zstd", [False, True], ids=["chunked", "zstd"])
async def test_empty_upload_past_the_ticket_is_refused(
    client: Client, image: Any, add_ticket: AddTicket, zstd: bool
) -> None:
    """An empty chunked or zstd body starting past the ticket answered 200
    (a Content-Length one 416, as imageio)."""
    path = image(data=random_data(1024))
    ticket = await add_ticket(path)
    headers = {"Content-Range": "bytes 2000-*/*"}
    body = b""
    if zstd:
        body = zstandard.ZstdCompressor().compress(b"")
        headers["Content-Encoding"] = "zstd"
    resp = await client.put(f"/images/{ticket}", data=chunks(body), headers=headers)
    assert resp.status == 416
    assert resp.headers["Content-Range"] == "bytes */1024"
    assert os.path.getsize(path) == 1024


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_zstd_upload(
    client: Client, image: Any, add_ticket: AddTicket, chunked: bool
) -> None:
    data = random_data(MiB) + bytes(3 * MiB) + random_data(MiB + 17)
    path = image(len(data))
    ticket = await add_ticket(path)
    body = zstandard.ZstdCompressor(level=1).compress(data)
    headers = {"Content-Encoding": "zstd",
               "X-Checksum": f"xxh3_128:{xxhash.xxh3_128_hexdigest(data)}"}
    resp = await client.put(
        f"/images/{ticket}", data=chunks(body) if chunked else body, headers=headers
    )
    assert resp.status == 200, await resp.text()
    assert path.read_bytes() == data


async def test_zstd_bomb_past_ticket_is_refused(
    client: Client, image: Any, add_ticket: AddTicket
) -> None:
    path = image(MiB)
    ticket = await add_ticket(path)
    body = zstandard.ZstdCompressor().compress(bytes(64 * MiB))  # a few KiB
    resp = await client.put(f"/images/{ticket}", data=body,
                            headers={"Content-Encoding": "zstd"})
    assert resp.status == 416
    assert os.path.getsize(path) == MiB


async def test_truncated_zstd_is_refused(
    client: Client, image: Any, add_ticket: AddTicket
) -> None:
    data = random_data(MiB)
    path = image(len(data))
    ticket = await add_ticket(path)
    body = zstandard.ZstdCompressor().compress(data)[:-10]
    resp = await client.put(f"/images/{ticket}", data=body,
                            headers={"Content-Encoding": "zstd"})
    assert resp.status == 400
    assert "middle of a frame" in await resp.text()


async def test_unknown_encoding_is_refused(
    client: Client, image: Any, add_ticket: AddTicket
) -> None:
    path = image(data=b"x" * 4096)
    ticket = await add_ticket(path)
    resp = await client.put(f"/images/{ticket}", data=b"y" * 10,
                            headers={"Content-Encoding": "gzip"})
    assert resp.status == 415
    assert path.read_bytes() == b"x" * 4096


async def test_x_checksum_mismatch(client: Client, image: Any, add_ticket: AddTicket) -> None:
    data = random_data(MiB)
    path = image(len(data))
    ticket = await add_ticket(path)
    wrong = xxhash.xxh3_128_hexdigest(b"something else")
    resp = await client.put(f"/images/{ticket}", data=data,
                            headers={"X-Checksum": f"xxh3_128:{wrong}"})
    assert resp.status == 422
    assert "does not match" in await resp.text()


@pytest.mark.parametrize("header", [
    pytest.param("bytes 10-5/*", id="first-after-last"),
    pytest.param("bytes x-5/*", id="junk"),
    pytest.param("items 0-5/*", id="unit"),
])
async def test_put_bad_content_range(
    client: Client, image: Any, add_ticket: AddTicket, header: str
) -> None:
    path = image(data=b"a" * 8192)
    ticket = await add_ticket(path)
    resp = await client.put(f"/images/{ticket}", data=b"b" * 6,
                            headers={"Content-Range": header})
    assert resp.status == 400
    assert path.read_bytes() == b"a" * 8192


async def test_put_past_ticket_size(client: Client, image: Any, add_ticket: AddTicket) -> None:
    path = image(data=b"a" * 8192)
    ticket = await add_ticket(path)
    resp = await client.put(f"/images/{ticket}", data=b"b" * 100,
                            headers={"Content-Range": "bytes 8100-8199/*"})
    assert resp.status == 416
    assert resp.headers["Content-Range"] == "bytes */8192"
    # The range as sent (inclusive end), not 8100-8200.
    assert await resp.text() == (
        "Requested range 8100-8199 is past the ticket size (8192 bytes)\n")
    assert path.read_bytes() == b"a" * 8192


async def test_put_past_a_1_gib_ticket_names_the_range_as_sent(
    client: Client, image: Any, add_ticket: AddTicket
) -> None:
    """The walkthrough's request: a Content-Length body, so the range is
    checked before any byte is read."""
    path = image(1 << 30)  # sparse
    ticket = await add_ticket(path)
    resp = await client.put(f"/images/{ticket}", data=b"b" * 5,
                            headers={"Content-Range": "bytes 1073741822-1073741826/*"})
    assert resp.status == 416
    assert resp.headers["Content-Range"] == "bytes */1073741824"
    assert await resp.text() == ("Requested range 1073741822-1073741826 is past the ticket "
                                 "size (1073741824 bytes)\n")
    assert os.path.getsize(path) == 1 << 30


async def test_flush_param_must_be_y_or_n(
    client: Client, image: Any, add_ticket: AddTicket
) -> None:
    path = image(data=b"a" * 4096)
    ticket = await add_ticket(path)
    resp = await client.put(f"/images/{ticket}?flush=maybe", data=b"b")
    assert resp.status == 400
    resp = await client.put(f"/images/{ticket}?flush=n", data=b"b")
    assert resp.status == 200


@pytest.mark.parametrize("value,closed", [
    pytest.param("y", True, id="y"),
    pytest.param("n", False, id="n"),
    pytest.param("yes", False, id="other"),
    pytest.param("", False, id="empty"),
])
async def test_close_param_as_imageio_reads_it(
    client: Client, image: Any, add_ticket: AddTicket, value: str, closed: bool
) -> None:
    """Only ``close=y`` closes; any other value is ignored, as imageio
    does, and never turns a request that did its work into a 400."""
    path = image(data=b"a" * 8192)
    ticket = await add_ticket(path)
    resp = await client.put(f"/images/{ticket}?close={value}", data=b"b" * 4096)
    assert resp.status == 200, await resp.text()
    assert (resp.headers.get("Connection") == "close") is closed
    assert path.read_bytes() == b"b" * 4096 + b"a" * 4096
    resp = await client.patch(f"/images/{ticket}?close={value}",
                              json={"op": "zero", "offset": 4096, "size": 4096})
    assert resp.status == 200, await resp.text()
    assert path.read_bytes() == b"b" * 4096 + bytes(4096)
    resp = await client.get(f"/images/{ticket}?close={value}", headers={"Range": "bytes=0-1"})
    assert resp.status == 206, await resp.text()
    assert (resp.headers.get("Connection") == "close") is closed
    assert await resp.read() == b"bb"


@pytest.mark.parametrize("header,status,body_range", [
    pytest.param("bytes=0-99", 206, (0, 100), id="first-last"),
    pytest.param("bytes=5000-", 206, (5000, 8192), id="open-ended"),
    pytest.param("bytes=8000-8191", 206, (8000, 8192), id="to-the-end"),
    pytest.param("bytes=8000-9999", 416, None, id="last-past-end"),
    pytest.param("bytes=-100", 416, None, id="suffix"),
    pytest.param("bytes=0-1,5-6", 416, None, id="multiple"),
    pytest.param("bytes=9000-9100", 416, None, id="past-end"),
    pytest.param("bytes=50-10", 416, None, id="first-after-last"),
])
async def test_ranged_get(
    client: Client, image: Any, add_ticket: AddTicket,
    header: str, status: int, body_range: tuple[int, int] | None,
) -> None:
    data = random_data(8192)
    ticket = await add_ticket(image(data=data))
    resp = await client.get(f"/images/{ticket}", headers={"Range": header})
    assert resp.status == status
    if body_range is None:
        assert resp.headers["Content-Range"] == "bytes */8192"
    else:
        start, end = body_range
        assert resp.headers["Content-Range"] == f"bytes {start}-{end - 1}/8192"
        assert resp.headers["Content-Length"] == str(end - start)
        assert await resp.read() == data[start:end]


async def test_patch_zero_and_flush(client: Client, image: Any, add_ticket: AddTicket) -> None:
    data = random_data(4 * MiB)
    path = image(data=data)
    ticket = await add_ticket(path, sparse=True)
    resp = await client.patch(f"/images/{ticket}",
                              json={"op": "zero", "offset": MiB, "size": 2 * MiB, "flush": True})
    assert resp.status == 200
    assert path.read_bytes() == data[:MiB] + bytes(2 * MiB) + data[3 * MiB:]
    resp = await client.get(f"/images/{ticket}/extents")
    extents = await resp.json()
    assert {"start": MiB, "length": 2 * MiB, "zero": True, "hole": True} in extents
    resp = await client.patch(f"/images/{ticket}", json={"op": "flush"})
    assert resp.status == 200


@pytest.mark.parametrize("msg,detail", [
    pytest.param({"op": "zero", "offset": 0}, "Missing required value for 'size'", id="no-size"),
    pytest.param({"op": "bogus"}, "Unsupported value 'bogus'", id="bad-op"),
    pytest.param({"op": "zero", "size": "x"}, "Integer required", id="not-int"),
    pytest.param({"op": "zero", "size": -1}, "Invalid value -1 < 0", id="negative"),
    pytest.param({"op": "zero", "size": 1, "flush": 1}, "Boolean required", id="flush-not-bool"),
])
async def test_patch_validation(
    client: Client, image: Any, add_ticket: AddTicket, msg: dict[str, Any], detail: str
) -> None:
    path = image(data=b"a" * 4096)
    ticket = await add_ticket(path)
    resp = await client.patch(f"/images/{ticket}", json=msg)
    assert resp.status == 400
    assert detail in await resp.text()
    assert path.read_bytes() == b"a" * 4096


async def test_patch_body_that_stops_arriving_times_out(
    client: Client, image: Any, add_ticket: AddTicket
) -> None:
    """A PATCH whose body stops midway is answered 408 (closing the
    connection) after the ticket's inactivity timeout, as imageio's socket
    timeout ends it; it held the connection forever."""
    ticket = await add_ticket(image(4096), inactivity_timeout=1)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(f"PATCH /images/{ticket} HTTP/1.1\r\nHost: x\r\n"
                     "Content-Length: 100\r\n\r\n{\"op\": ".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        body = await asyncio.wait_for(reader.readuntil(b"\n"), 10)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 408 "), head
    assert b"Connection: close" in head
    assert body == b"The JSON body did not arrive within 1 s\n"


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "OPTIONS"])
async def test_empty_ticket_id_is_a_400_as_in_imageio(client: Client, method: str) -> None:
    resp = await client.request(method, "/images/", data=b"{}" if method != "GET" else None)
    assert resp.status == 400
    assert await resp.text() == "Ticket id is required\n"


async def test_sub_resources_answer_with_a_trailing_slash_as_in_imageio(
    client: Client, image: Any, add_ticket: AddTicket
) -> None:
    ticket = await add_ticket(image(data=b"x" * 4096))
    for sub in ("extents", "checksum", "checksum/algorithms"):
        plain = await client.get(f"/images/{ticket}/{sub}")
        slash = await client.get(f"/images/{ticket}/{sub}/")
        assert (plain.status, slash.status) == (200, 200), sub
        assert await slash.json() == await plain.json(), sub


async def test_patch_zero_past_end(client: Client, image: Any, add_ticket: AddTicket) -> None:
    ticket = await add_ticket(image(data=b"a" * 4096))
    resp = await client.patch(f"/images/{ticket}", json={"op": "zero", "size": 8192})
    assert resp.status == 416
    assert resp.headers["Content-Range"] == "bytes */4096"
    assert await resp.text() == (
        "Requested range 0-8191 is past the ticket size (4096 bytes)\n")


async def test_patch_zero_of_nothing_past_end(
    client: Client, image: Any, add_ticket: AddTicket
) -> None:
    ticket = await add_ticket(image(data=b"a" * 4096))
    resp = await client.patch(f"/images/{ticket}",
                              json={"op": "zero", "offset": 5000, "size": 0})
    assert resp.status == 416
    assert await resp.text() == "Requested offset 5000 is past the ticket size (4096 bytes)\n"


async def test_extents_report_holes(client: Client, image: Any, add_ticket: AddTicket) -> None:
    size = 8 * MiB
    path = image(size)  # sparse: all hole
    with open(path, "r+b") as f:
        f.seek(2 * MiB)
        f.write(random_data(MiB))
    ticket = await add_ticket(path)
    resp = await client.get(f"/images/{ticket}/extents?context=zero")
    assert resp.status == 200
    extents = await resp.json()
    assert extents[0]["start"] == 0
    assert sum(e["length"] for e in extents) == size
    data = [e for e in extents if not e["zero"]]
    assert data == [{"start": 2 * MiB, "length": MiB, "zero": False, "hole": False}]
    resp = await client.get(f"/images/{ticket}/extents?context=dirty")
    assert resp.status == 404


@pytest.mark.parametrize("algorithm", ["blake2b", "sha256"])
async def test_checksum_equals_imageio(
    client: Client, image: Any, add_ticket: AddTicket, algorithm: str
) -> None:
    path = image(10 * MiB + 3)
    with open(path, "r+b") as f:
        f.seek(5 * MiB)
        f.write(random_data(MiB))
    ticket = await add_ticket(path)
    resp = await client.get(f"/images/{ticket}/checksum", params={"algorithm": algorithm})
    assert resp.status == 200
    ours = await resp.json()
    digest_size = 32 if algorithm == "blake2b" else None
    theirs = imageio_blkhash.checksum(str(path), algorithm=algorithm, digest_size=digest_size)
    assert ours == theirs


async def test_checksum_xxh3_and_bad_block_size(
    client: Client, image: Any, add_ticket: AddTicket
) -> None:
    ticket = await add_ticket(image(data=random_data(MiB)))
    resp = await client.get(f"/images/{ticket}/checksum?algorithm=xxh3_128")
    assert (await resp.json())["algorithm"] == "xxh3_128"
    resp = await client.get(f"/images/{ticket}/checksum?block_size=1000")
    assert resp.status == 400
    assert "Block size out of allowed range" in await resp.text()


async def test_options(client: Client, image: Any, add_ticket: AddTicket) -> None:
    path = image(data=b"a" * 4096)
    rw = await add_ticket(path)
    ro = await add_ticket(path, ops=["read"])
    resp = await client.options(f"/images/{rw}")
    body = await resp.json()
    assert resp.headers["Allow"] == "OPTIONS,GET,PUT,PATCH"
    assert set(body["features"]) == {"checksum", "extents", "flush", "zero"}
    assert body["max_writers"] >= 1 and body["max_readers"] >= 1
    assert "unix_socket" not in body
    resp = await client.options(f"/images/{ro}")
    assert resp.headers["Allow"] == "OPTIONS,GET"
    assert set((await resp.json())["features"]) == {"checksum", "extents"}
    resp = await client.options("/images/*")
    assert "max_writers" not in await resp.json()


async def test_info(client: Client) -> None:
    resp = await client.get("/info/")
    assert resp.status == 200
    assert "version" in await resp.json()


async def test_readonly_ticket_refuses_writes(
    client: Client, image: Any, add_ticket: AddTicket
) -> None:
    path = image(data=b"a" * 4096)
    ticket = await add_ticket(path, ops=["read"])
    resp = await client.put(f"/images/{ticket}", data=b"b" * 10)
    assert resp.status == 403
    resp = await client.patch(f"/images/{ticket}", json={"op": "zero", "size": 10})
    assert resp.status == 403
    assert path.read_bytes() == b"a" * 4096


async def test_unknown_ticket(client: Client) -> None:
    resp = await client.put("/images/no-such-ticket", data=b"x")
    assert resp.status == 403
    assert "No such ticket" in await resp.text()
    resp = await client.get("/images/no-such-ticket")
    assert resp.status == 403


async def test_expired_ticket(client: Client, image: Any, add_ticket: AddTicket) -> None:
    ticket = await add_ticket(image(data=b"a" * 4096), timeout=0)
    resp = await client.get(f"/images/{ticket}")
    assert resp.status == 403
    assert "expired" in await resp.text()
    # Extending it over the control API makes it usable again.
    resp = await client.patch(f"/tickets/{ticket}", json={"timeout": 300})
    assert resp.status == 200
    resp = await client.get(f"/images/{ticket}")
    assert resp.status == 200


async def test_missing_content_length(client: Client, image: Any, add_ticket: AddTicket) -> None:
    ticket = await add_ticket(image(data=b"a" * 4096))
    reader, writer = await _raw(client)
    writer.write(f"PUT /images/{ticket} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    status = (await reader.readline()).split()[1]
    writer.close()
    assert status == b"400"


async def _raw(client: Client) -> Any:
    import asyncio

    return await asyncio.open_connection(client.host, client.port)


async def test_client_disconnect_mid_upload_keeps_daemon_and_ticket(
    client: Client, image: Any, add_ticket: AddTicket
) -> None:
    size = 8 * MiB
    path = image(size)
    ticket = await add_ticket(path)
    _, writer = await _raw(client)
    writer.write(
        f"PUT /images/{ticket} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()
    )
    writer.write(b"z" * (3 * MiB))
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    # The ticket is still usable and a full upload succeeds.
    data = random_data(size)
    resp = await client.put(f"/images/{ticket}", data=data)
    assert resp.status == 200, await resp.text()
    assert path.read_bytes() == data
    info = await (await client.get(f"/tickets/{ticket}")).json()
    assert info["active"] is False


async def test_failed_requests_log_no_whole_ticket_id(
    client: Client, image: Callable[..., Path], add_ticket: AddTicket,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The ticket id is the transfer's secret: the error log line of a
    failed image request held it whole, and a log reader could use it."""
    ticket = await add_ticket(image(MiB), ops=["read"])
    resp = await client.put(f"/images/{ticket}", data=b"x",
                            headers={"Content-Range": "bytes 0-0/*"})
    assert resp.status == 403
    assert ticket in await resp.text()  # the client knows it already
    lines = [r.getMessage() for r in caplog.records if "forbids" in r.getMessage()]
    assert lines and all(ticket not in line for line in lines), lines
    assert f"/images/{ticket[:8]}..." in lines[0]
    assert (await client.get(f"/images/{ticket}")).status == 200  # still valid
