"""Staging the OVF tar of a domain with a single store.

With two stores or more, an update writes the store updated longest ago
and the newest good one stays untouched until the new archive is
committed: a body that turns out invalid, or stops half way, costs
nothing.  With one store there is no such other copy; writing the body
straight into it would lose the domain's only good archive to any bad
or cut-off stream.  So that body goes first into a staging file in the
daemon's data directory, checked as it arrives, and the store is marked
updating only once the whole body is in and valid
(:meth:`stream.ovf.Updates.receive`).

Before the store is touched, the staged archive is made durable as
``<sd_uuid>.pending`` (the tar, then a commit record after the store's
capacity, as in a store; synced, linked, directory synced).  The store is
then copied from it and committed, and only then is the file removed.
A crash or an error in between leaves the store marked updating and the
pending file whole: :func:`restore` commits it into the store the next
time the daemon touches the domain's stores, so the domain is never
without a good archive for longer than that.  A pending file is restored
only into a domain none of whose stores is valid: if the store survived
(the crash came before it was marked), the answer for that archive was
never sent, and the store keeps what it had.  And only while the store's
record would give the generation the archive was kept for: a daemon
killed after its commit, before it removed the file, must not bring that
archive back over newer ones another host committed since (unless no
record is left to tell, when the archive is the best there is).

Staging files are anonymous (``O_TMPFILE``) until kept; where the
filesystem lacks it, a named temporary file that :func:`pending` removes
after a crash.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
import time
from contextlib import closing
from pathlib import Path

from volume.base import Volume
from volume.durable import fsync_dir, remove_durable
from volume.file import FileVolume
from volume.ovfrecord import (
    CHUNK,
    RECORD_SIZE,
    CommitRecord,
    aligned_view,
    chunks,
    record_offset,
    tar_digest,
)
from volume.ovfrecord import read as read_record
from volume.ovfrecord import write as write_record
from volume.ovfstop import Check
from volume.ovfstore import OvfStores
from volume.ovfupdate import next_generation
from volume.sd import StorageDomain

log = logging.getLogger(__name__)

#: Where in the data directory staging files go (and nothing else).
STAGING_DIR = "ovf-staging"
PENDING = ".pending"


class Staging:
    """An empty staging file of a store's ``capacity`` (sparse, with room
    for a commit record after it) as a volume; closing it frees it unless
    :meth:`keep` made it a domain's pending archive."""

    def __init__(self, data_dir: Path, capacity: int) -> None:
        self._dir = data_dir / STAGING_DIR
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._named: Path | None = None  # without O_TMPFILE
        try:
            fd = os.open(self._dir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            fd, name = tempfile.mkstemp(dir=self._dir, suffix=".tmp")
            self._named = Path(name)
        self._fd = fd
        try:
            os.ftruncate(fd, capacity + RECORD_SIZE)
            self.volume: Volume = _file_volume(os.dup(fd))
        except BaseException:
            self._discard()
            raise

    def keep(self, sd_uuid: str, tar_length: int, digest: str, generation: int) -> None:
        """Make ``[0, tar_length)`` durable as the domain's pending archive,
        replacing any older one: record, sync, link, directory sync.
        ``generation`` is the one the update of the store is to mark it
        with: :func:`restore` commits the archive only into a store marked
        so, not into one another update (another host's) has cut off."""
        self.stamp(generation, tar_length, digest)
        final = pending_path(self._dir.parent, sd_uuid)
        if self._named is None:
            temp = self._dir / f".{sd_uuid}.{os.getpid()}.tmp"
            temp.unlink(missing_ok=True)
            # A directory fd makes os.link use linkat(), and follow the
            # /proc link to the file (link() would not: EXDEV).
            directory = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.link(f"/proc/self/fd/{self._fd}", temp.name, dst_dir_fd=directory,
                        follow_symlinks=True)
            finally:
                os.close(directory)
        else:
            temp, self._named = self._named, None
        os.replace(temp, final)
        fsync_dir(str(self._dir))

    def stamp(self, generation: int, tar_length: int, digest: str) -> None:
        """(Re)write the staged archive's record with ``generation``, synced."""
        write_record(self.volume, self.volume.size(), CommitRecord(
            generation, tar_length, digest, time.time(), updating=False))

    def close(self) -> None:
        self.volume.close()
        self._discard()

    def _discard(self) -> None:
        os.close(self._fd)
        if self._named is not None:
            self._named.unlink(missing_ok=True)


def _file_volume(fd: int) -> Volume:
    """``fd`` as a volume; closed if that fails."""
    try:
        return FileVolume(fd)
    except BaseException:
        os.close(fd)
        raise


def pending_path(data_dir: Path, sd_uuid: str) -> Path:
    return data_dir / STAGING_DIR / f"{sd_uuid}{PENDING}"


def pending(data_dir: Path) -> set[str]:
    """The domains with a pending archive (blocking); staging files a crash
    left unnamed or half-linked are removed."""
    directory = data_dir / STAGING_DIR
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return set()
    found = set()
    for name in names:
        if name.endswith(PENDING):
            found.add(name[:-len(PENDING)])
        else:
            (directory / name).unlink(missing_ok=True)
    return found


def drop(data_dir: Path, sd_uuid: str) -> None:
    """Remove the domain's pending archive, durably (blocking)."""
    remove_durable(str(pending_path(data_dir, sd_uuid)))


def copy_into(source: Volume, target: Volume, length: int, check: Check) -> None:
    """``[0, length)`` of ``source`` into ``target``, calling ``check``
    before each chunk (it raises to stop)."""
    pos = 0
    with aligned_view(CHUNK) as buf:
        for chunk in chunks(source, length, buf):
            check()
            target.write(pos, chunk)
            pos += len(chunk)


def restore(data_dir: Path, storage: StorageDomain, check: Check) -> CommitRecord | None:
    """Commit the domain's pending archive into its stores if none of them
    is valid (blocking); the new record, or None if nothing was restored.

    The pending file is removed once committed, or when it is not needed
    (a store is valid) or not whole (it cannot be: it is linked only once
    synced, but it is checked all the same).  An error (the storage, or
    ``check`` refusing) leaves it for the next time.
    """
    try:
        fd = os.open(pending_path(data_dir, storage.uuid), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with closing(_file_volume(fd)) as source, closing(OvfStores.open(storage)) as stores:
        size = source.size()
        record, error = read_record(source, size)
        if record is None or record.tar_length > record_offset(size):
            error = error or "its archive length exceeds the file"
        else:
            with aligned_view(CHUNK) as buf:
                if tar_digest(source, record.tar_length, buf) != record.digest:
                    error = "archive checksum mismatch"
        states = stores.states(trusted=True) if error is None else []
        if record is None or error is not None:
            log.error("pending OVF archive of %s discarded: %s", storage.uuid, error)
        elif any(state.valid for state in states):
            log.info("pending OVF archive of %s not needed: a store is valid", storage.uuid)
        elif record.generation and any(state.record for state in states) \
                and next_generation(states) != record.generation:
            # The stores moved on since it was kept (another host's update
            # committed or was cut off there): it is older than what they had.
            # With no record left to tell (one torn as it was written), the
            # archive is the best there is.
            log.info("pending OVF archive of %s discarded: kept for generation %d, the "
                     "stores are past it", storage.uuid, record.generation)
        elif record.tar_length > stores.capacity:
            log.error("pending OVF archive of %s discarded: %d bytes, the stores hold %d",
                      storage.uuid, record.tar_length, stores.capacity)
        else:
            check()
            update = stores.begin(at_least=record.generation)
            try:
                copy_into(source, update.volume, record.tar_length, check)
                committed = update.seal(record.tar_length, record.digest, read_back=True,
                                        check=check)
            except BaseException:
                update.abort()
                raise
            update.replicate(check)
            drop(data_dir, storage.uuid)
            log.warning("OVF store of %s restored from its pending archive: generation %d, "
                        "%d bytes", storage.uuid, committed.generation, committed.tar_length)
            return committed
    drop(data_dir, storage.uuid)
    return None
