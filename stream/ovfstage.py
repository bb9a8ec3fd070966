"""Staging the OVF tar of a domain with a single store.

With two stores or more, an update writes the store updated longest ago
and the newest good one stays untouched until the new archive is
committed: a body that turns out invalid, or stops half way, costs
nothing.  With one store there is no such other copy; writing the body
straight into it would lose the domain's only good archive to any bad
or cut-off stream.  So that body goes first into a staging file in the
daemon's data directory, checked as it arrives, and the store is marked
updating only once the whole body is in and valid; then it is copied in
and committed (:meth:`stream.ovf.Updates.receive`).  A crash during that
copy still leaves the domain with no valid store (one store cannot be
updated in place otherwise), but only for what a local copy of a few MiB
takes, not for as long as a client takes to send.

The staging file is anonymous (``O_TMPFILE``, or unlinked at once where
the filesystem lacks it): nothing is left behind by a crash.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from volume.base import Volume
from volume.file import FileVolume
from volume.ovfrecord import CHUNK, aligned_view, chunks
from volume.ovfstop import Check

#: Where in the data directory staging files go (and nothing else).
STAGING_DIR = "ovf-staging"


def open_staging(data_dir: Path, capacity: int) -> Volume:
    """An empty anonymous file of ``capacity`` bytes (sparse) as a volume;
    closing it frees it."""
    directory = data_dir / STAGING_DIR
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
        fd, path = tempfile.mkstemp(dir=directory)
        os.unlink(path)
    try:
        os.ftruncate(fd, capacity)
        return FileVolume(fd)
    except BaseException:
        os.close(fd)
        raise


def copy_into(source: Volume, target: Volume, length: int, check: Check) -> None:
    """``[0, length)`` of ``source`` into ``target``, calling ``check``
    before each chunk (it raises to stop)."""
    pos = 0
    with aligned_view(CHUNK) as buf:
        for chunk in chunks(source, length, buf):
            check()
            target.write(pos, chunk)
            pos += len(chunk)
