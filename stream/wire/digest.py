"""The ``X-Checksum: xxh3_128:<32 hex digits>`` header of an upload.

It is the xxh3-128 of the data as written to the volume (after any
``Content-Encoding`` is removed), so the check covers what reached disk.
"""

from __future__ import annotations

import re

from .errors import BadChecksum

_HEX128 = re.compile(r"[0-9a-f]{32}$")


def parse_x_checksum(value: str | None) -> str | None:
    """Return the expected hex digest, or None when the header is absent."""
    if value is None:
        return None
    algorithm, sep, digest = value.strip().partition(":")
    if not sep or algorithm.lower() != "xxh3_128":
        raise BadChecksum(f"X-Checksum must be 'xxh3_128:<hex>', not {value!r}")
    digest = digest.strip().lower()
    if not _HEX128.match(digest):
        raise BadChecksum(f"X-Checksum digest must be 32 hex digits, not {digest!r}")
    return digest
