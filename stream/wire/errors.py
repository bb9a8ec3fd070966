"""Errors raised by the sans-IO wire parsers.

They mirror the shape of ``volume.errors.Error`` (an ``http_status`` and a
``code`` on each class) without importing it, so that ``engine_client`` can
use the wire formats without depending on the volume layer.  The daemon's
single error middleware maps both families.
"""

from __future__ import annotations

from typing import ClassVar


class WireError(ValueError):
    http_status: ClassVar[int] = 400
    code: ClassVar[str] = "invalid-request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRange(WireError):
    """A Range header we do not serve: answered 416 with ``bytes */size``."""

    http_status = 416
    code = "invalid-range"

    def __init__(self, detail: str, size: int) -> None:
        super().__init__(detail)
        self.size = size


class BadContentRange(WireError):
    code = "invalid-content-range"


class BadChecksum(WireError):
    code = "invalid-checksum"


class BadTar(WireError):
    """The stream is not a valid store.  Always 422, truncation included: the
    HTTP body arrived whole, what it holds is wrong (the sender stopped
    early or sent a tar shorter than it meant to)."""

    http_status = 422
    code = "invalid-ovf-tar"
