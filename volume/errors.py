"""The one exception hierarchy of Sluice.

Every error a client can cause or should hear about derives from :class:`Error`
and carries the HTTP status it maps to; ``stream.middleware`` turns it into a
response in exactly one place.  The root lives here because ``volume`` depends
on nothing else of ours, while ``stream`` (and its errors) build on it.
"""

from __future__ import annotations

from typing import ClassVar


class Error(Exception):
    """Base of all Sluice errors.  ``str(e)`` is safe to show to a client."""

    http_status: ClassVar[int] = 500
    #: Short machine-readable name, the ``error`` field of a JSON error body.
    code: ClassVar[str] = "internal-error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidRequest(Error):
    http_status = 400
    code = "invalid-request"


class Forbidden(Error):
    http_status = 403
    code = "forbidden"


class NotFound(Error):
    http_status = 404
    code = "not-found"


class Conflict(Error):
    http_status = 409
    code = "conflict"


class OutOfRange(Error):
    """A request addresses bytes past the end of a ticket or volume."""

    http_status = 416
    code = "out-of-range"

    def __init__(self, detail: str, size: int) -> None:
        super().__init__(detail)
        self.size = size


class ChecksumMismatch(Error):
    http_status = 422
    code = "checksum-mismatch"


class NoSpace(Error):
    """ENOSPC/EDQUOT from the storage: the client may retry elsewhere."""

    http_status = 507
    code = "no-space"


class VolumeError(Error):
    """The storage failed (EIO and friends).  The detail never leaks paths."""

    http_status = 500
    code = "volume-error"


class StoreUnavailable(Error):
    """An OVF store update would have to risk the domain's last valid store."""

    http_status = 503
    code = "ovf-store-unavailable"


class Unsupported(Error):
    """The backend cannot do this operation (for example dirty extents)."""

    http_status = 404
    code = "unsupported"
