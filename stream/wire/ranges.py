"""Strict parsers for ``Range`` and ``Content-Range`` (RFC 9110 §14).

Anything we do not serve is rejected, never guessed: a misread range writes
data at the wrong offset.  The accepted forms are the ones ovirt-imageio
accepts, so its clients see the same answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import BadContentRange, BadRange

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+|\*)/(\d+|\*)$")


@dataclass(frozen=True)
class ByteRange:
    """Half-open ``[start, end)``."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


def parse_range(header: str, size: int) -> ByteRange:
    """Parse ``Range: bytes=first-[last]`` against a resource of ``size``.

    Raises BadRange (416, with ``size`` for ``Content-Range: bytes */size``)
    for suffix ranges, multiple ranges, junk, ``first > last`` and ranges
    that end past ``size``.  RFC 9110 §14.1.2 would clip a ``last`` past
    the end; imageio refuses it, and so do we: a client asking for bytes
    past the image has the wrong size, and a short 206 would hide that.
    """
    value = header.strip()
    if value.startswith("bytes=-"):
        raise BadRange("suffix-byte-range-spec not supported", size)
    if "," in value:
        raise BadRange("multiple ranges not supported", size)
    m = _RANGE.match(value)
    if m is None:
        raise BadRange(f"invalid Range header: {header!r}", size)
    try:
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) else size - 1
    except ValueError:  # more digits than int() converts
        raise BadRange(f"invalid Range header: {header[:100]!r}", size) from None
    if first >= size:
        raise BadRange(f"range starts at {first}, past the end ({size} bytes)", size)
    if first > last:
        raise BadRange(f"invalid range {first}-{last}: first byte after last", size)
    if last >= size:
        raise BadRange(f"range {first}-{last} ends past the end ({size} bytes)", size)
    return ByteRange(first, last + 1)


@dataclass(frozen=True)
class ContentRange:
    start: int
    #: Exclusive end, or None for ``first-*`` (length from the body).
    end: int | None
    #: Total size claimed by the client, or None for ``*``.
    complete: int | None


def parse_content_range(header: str) -> ContentRange:
    """Parse ``Content-Range: bytes first-last/complete`` of an upload.

    As in imageio, ``last`` and ``complete`` may be ``*``.  Malformed values,
    ``first > last`` and a ``last`` at or past ``complete`` raise
    BadContentRange (400).
    """
    m = _CONTENT_RANGE.match(header.strip())
    if m is None:
        raise BadContentRange(f"invalid Content-Range header: {header!r}")
    try:
        first = int(m.group(1))
        end = None if m.group(2) == "*" else int(m.group(2)) + 1
        complete = None if m.group(3) == "*" else int(m.group(3))
    except ValueError:  # more digits than int() converts
        raise BadContentRange(f"invalid Content-Range header: {header[:100]!r}") from None
    if end is not None and end <= first:
        raise BadContentRange(f"invalid Content-Range {header!r}: first byte after last")
    if end is not None and complete is not None and end > complete:
        raise BadContentRange(f"invalid Content-Range {header!r}: last byte past the "
                              "complete length")
    return ContentRange(first, end, complete)


def content_range(r: ByteRange, size: int) -> str:
    """The ``Content-Range`` value of a 206 answer."""
    return f"bytes {r.start}-{r.end - 1}/{size}"
