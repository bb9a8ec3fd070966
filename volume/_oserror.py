"""Turn ``OSError`` from the storage into our errors, in one place.

The message a client sees never carries a path: ``OSError.__str__`` includes
the file name, so the detail is built from the errno alone and the full
error goes to the log instead.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import Conflict, Error, Forbidden, InvalidRequest, NoSpace, NotFound, VolumeError

log = logging.getLogger(__name__)

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_FORBIDDEN = {errno.EACCES, errno.EPERM, errno.EROFS}
# ENXIO and ENODEV: opening a device node whose device is gone (a detached loop).
_NOT_FOUND = {errno.ENOENT, errno.ENOTDIR, errno.ENXIO, errno.ENODEV}


def translate(e: OSError, what: str) -> Error:
    """The error to raise for ``e``, which happened while doing ``what``.

    ``what`` is a short verb phrase such as "write" or "open volume"; it ends
    up in the client-visible message, so it must not contain paths.
    """
    code = e.errno
    reason = os.strerror(code) if code is not None else "unknown error"
    if code in _NO_SPACE:
        log.warning("%s failed, no space: %s", what, e)
        return NoSpace("no space left on the storage")
    if code in _NOT_FOUND:
        log.warning("%s failed, not found: %s", what, e)
        return NotFound(f"{what} failed: no such volume")
    if code in _FORBIDDEN:
        log.warning("%s failed, not permitted: %s", what, e)
        return Forbidden(f"{what} failed: {reason}")
    if code == errno.EEXIST:
        log.warning("%s failed, exists: %s", what, e)
        return Conflict(f"{what} failed: the volume already exists")
    if code == errno.EFBIG:
        log.warning("%s failed, too large: %s", what, e)
        return InvalidRequest(f"{what} failed: larger than the storage allows a file to be")
    if code == errno.EISDIR:
        log.warning("%s failed, directory: %s", what, e)
        return InvalidRequest(f"{what} failed: not a regular file or block device")
    log.error("%s failed: %s", what, e)
    return VolumeError(f"storage error during {what}: {reason}")


@contextmanager
def oserrors(what: str) -> Iterator[None]:
    """Raise our error for any ``OSError`` from the body; see :func:`translate`."""
    try:
        yield
    except OSError as e:
        raise translate(e, what) from e
