"""Errors of the HTTP layer, in the one hierarchy rooted at volume.errors."""

from __future__ import annotations

from volume.errors import Error, InvalidRequest


class UnsupportedEncoding(Error):
    http_status = 415
    code = "unsupported-encoding"


class PartialContent(InvalidRequest):
    """The client sent less than it announced, or went away mid-body."""

    code = "partial-content"


class BodyTooLarge(Error):
    http_status = 413
    code = "body-too-large"
