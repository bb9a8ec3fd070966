from __future__ import annotations

import pytest

from stream.wire.errors import BadContentRange, BadRange
from stream.wire.ranges import ByteRange, ContentRange, parse_content_range, parse_range


@pytest.mark.parametrize("header,expected", [
    pytest.param("bytes=0-0", ByteRange(0, 1), id="one-byte"),
    pytest.param("bytes=10-19", ByteRange(10, 20), id="first-last"),
    pytest.param("bytes=10-", ByteRange(10, 100), id="open-ended"),
    pytest.param("bytes=90-99", ByteRange(90, 100), id="to-the-end"),
    pytest.param(" bytes=1-2 ", ByteRange(1, 3), id="whitespace"),
])
def test_parse_range(header: str, expected: ByteRange) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", [
    pytest.param("bytes=-10", id="suffix"),
    pytest.param("bytes=0-1,3-4", id="multiple"),
    pytest.param("bytes=5-4", id="first-after-last"),
    pytest.param("bytes=100-", id="at-end"),
    # imageio refuses a last byte past the end; RFC 9110 would clip it.
    pytest.param("bytes=90-100", id="last-past-end"),
    pytest.param("bytes=0-1000", id="last-far-past-end"),
    pytest.param("bytes=abc", id="junk"),
    pytest.param("items=0-1", id="unit"),
    pytest.param("bytes=", id="empty"),
])
def test_parse_range_rejects(header: str) -> None:
    with pytest.raises(BadRange) as e:
        parse_range(header, 100)
    assert e.value.size == 100
    assert e.value.http_status == 416


@pytest.mark.parametrize("header,expected", [
    pytest.param("bytes 0-99/*", ContentRange(0, 100, None), id="imageio-client"),
    pytest.param("bytes 5-*/*", ContentRange(5, None, None), id="open"),
    pytest.param("bytes 0-9/10", ContentRange(0, 10, 10), id="complete"),
])
def test_parse_content_range(header: str, expected: ContentRange) -> None:
    assert parse_content_range(header) == expected


@pytest.mark.parametrize("header", [
    "bytes 10-9/*", "bytes -1-5/*", "bytes 0-5", "bytes=0-5/*", "bytes a-b/*", "",
    # The last byte at or past the complete length (imageio: 400).
    "bytes 100-199/50", "bytes 0-10/10",
])
def test_parse_content_range_rejects(header: str) -> None:
    with pytest.raises(BadContentRange) as e:
        parse_content_range(header)
    assert e.value.http_status == 400
