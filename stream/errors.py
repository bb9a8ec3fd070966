"""Errors of the HTTP layer, in the one hierarchy rooted at volume.errors."""

from __future__ import annotations

from volume.errors import Error, InvalidRequest


class UnsupportedEncoding(Error):
    http_status = 415
    code = "unsupported-encoding"


class UnsupportedTransferCoding(Error):
    """A transfer coding other than chunked (RFC 9112 §6.1: 501)."""

    http_status = 501
    code = "unsupported-transfer-coding"


class PartialContent(InvalidRequest):
    """The client sent less than it announced, or went away mid-body."""

    code = "partial-content"


class TooSlow(InvalidRequest):
    """The body did not arrive within the request's deadline."""

    http_status = 408
    code = "too-slow"


class BodyTooLarge(Error):
    http_status = 413
    code = "body-too-large"


class Overloaded(Error):
    """The daemon is at a bound it keeps to protect the host; try later."""

    http_status = 503
    code = "overloaded"


class ClientGone(ConnectionError):
    """The client closed its connection while its request ran."""


class Stalled(ClientGone):
    """The client stopped reading a body; its connection was aborted."""
