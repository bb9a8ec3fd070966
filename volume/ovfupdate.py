"""Writing one archive into the OVF stores of a domain: :class:`Update`.

The protocol and why it is crash-safe are in :mod:`volume.ovfstore`; this
module is its write half.  Every store is written the same way, target
and copies alike: zero the archive's first :data:`HEAD` bytes, mark the
record updating and sync; write the rest of the archive, zero what follows
it, sync; read the archive back (the first bytes from memory) and check
its digest; write the first bytes, sync and read them back; write the
committed record and sync.

The first bytes go last for the readers that know no record: hosted-engine
runs ``dd | tar -xOf - <vm>.ovf`` on whichever store it finds.  While a
store is written (or after a crash cut it off) its first block is zeros,
which tar reads as an empty archive: "not found", and hosted-engine falls
back to its previous configuration.  Written in order, the store would
start with the new archive's headers over the old archive's bytes, and an
OVF cut at the write position would extract without an error, torn.
"""

from __future__ import annotations

import logging
import time
from contextlib import closing
from types import TracebackType

from . import ovfrecord
from ._ovfguard import DomainGuard, forget, remember, store_key
from .base import Volume
from .errors import ChecksumMismatch, Error, InvalidRequest
from .ovfarea import HEAD, StoreArea, update_ended
from .ovfrecord import CHUNK, NO_DIGEST, CommitRecord, aligned_view, check_digest, chunks
from .ovfstate import StoreState
from .ovfstop import Check, Stopped, go_on, stopping
from .sd import VolumeInfo, open_data

log = logging.getLogger(__name__)

#: Zeroed after each archive; see :mod:`volume.ovfstore` for why 1 MiB.
TAIL_ZERO = 1 << 20
#: How long writing a store lets its readers finish before cutting them
#: off: an engine GET of a 128 MiB store takes seconds, so a reader still
#: there is a slow or stalled client, and it reads an older generation
#: than the one just committed (see :mod:`volume._ovfguard`).  Well under
#: the 30 s an update waits for the domain's previous one.
READ_GRACE = 10.0
#: How long a read under way may take to return once its reader is cut
#: off: one chunk; longer means the storage hangs, and the store is left.
READ_WAIT = 30.0

def next_generation(states: list[StoreState]) -> int:
    """The generation an update of stores in ``states`` is given (see
    :attr:`Update.generation`)."""
    return max(1, max((s.record.generation + (not s.record.updating)
                       for s in states if s.record), default=1))


class Update:
    """One incoming archive.  Made by :meth:`OvfStores.begin`, which passes
    the stores oldest first; end it with :meth:`commit` or :meth:`abort`
    (as a context manager it aborts unless committed)."""

    def __init__(self, sd_uuid: str, owner: DomainGuard, order: list[StoreState],
                 capacity: int, at_least: int = 1) -> None:
        #: One more than the newest committed generation: the newest valid
        #: one, or a newer one whose archive has since gone bad (so that
        #: number is not given to a second archive).  A cut-off update's
        #: number is given again: nothing was committed under it; and it
        #: is the least given, for its record replaced the one committed
        #: before it (a domain's only store: its number would come again).
        #: ``at_least`` raises it (see :meth:`OvfStores.begin`).
        self.generation = max(at_least, next_generation(order))
        #: The store written first, as it was before the update.
        self.target = order[0]
        #: What went wrong copying into the other stores (see :meth:`commit`).
        self.replica_errors: list[str] = []
        self._sd_uuid = sd_uuid
        self._guard = owner
        self._others = order[1:]
        self._capacity = capacity
        self._done = False
        self._vol: Volume | None = None
        self._area: StoreArea | None = None
        self._record: CommitRecord | None = None
        self._checked = False
        owner.start_write(store_key(self.target.volume), READ_GRACE, READ_WAIT)
        try:
            self._vol = open_data(self.target.volume)
            self._mark(self._vol, self.target.volume)
            #: The target's archive area, writable: stream the tar into it.
            #: Do not close it; commit and abort do.
            self._area = StoreArea(self._vol, capacity)
            self.volume: Volume = self._area
        except BaseException:
            # The domain's update stays its caller's (OvfStores.begin),
            # which may try another target.
            self._finish(end_update=False)
            raise
        log.info("OVF update began sd=%s generation=%d target=%d vol=%s", sd_uuid,
                 self.generation, self.target.index, store_key(self.target.volume))

    def __enter__(self) -> Update:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.abort()

    def commit(self, tar_length: int, digest: str, check: Check = go_on) -> CommitRecord:
        """Commit the ``tar_length`` bytes written, whose xxh3-128 is ``digest``,
        then copy them into the other stores; returns the target's record.

        :meth:`seal` (reading the target back first) and :meth:`replicate`
        in one call.
        """
        record = self.seal(tar_length, digest, check=check)
        self.replicate(check)
        return record

    def seal(self, tar_length: int, digest: str, *, read_back: bool = True,
             check: Check = go_on) -> CommitRecord:
        """Commit the target: zero after the archive, sync, write the record.

        With ``read_back`` the archive is read back and its digest checked
        before the record is written; without, that check is the first
        step of :meth:`replicate`, before any other store is touched, so
        an answer can go out as soon as the target is committed.

        ``check`` is called last before the archive's first bytes are
        written, the first write any reader can see; if it raises, nothing
        is committed.  The caller's final say: for instance, whether the
        pool map still allows writes to the domain.

        Any failure before the record is written ends the update as
        :meth:`abort` does (ChecksumMismatch if the bytes read back do not
        match ``digest``).  The update stays open: :meth:`replicate` next.
        """
        if self._vol is None or self._done or self._record is not None:
            raise update_ended()
        try:
            digest = check_digest(digest)
            if not isinstance(tar_length, int) or isinstance(tar_length, bool) \
                    or not 0 <= tar_length <= self._capacity:
                raise InvalidRequest(f"archive length must be 0 to {self._capacity} bytes, "
                                     f"not {tar_length!r}")
            assert self._area is not None
            with aligned_view(CHUNK) as buf:
                record = self._seal(self._vol, self._area, self.target.volume, tar_length,
                                    digest, buf if read_back else None, check)
        except BaseException as e:
            log.warning("OVF update not committed sd=%s generation=%d: %s; store %d "
                        "stays invalid", self._sd_uuid, self.generation, e, self.target.index)
            self._finish()
            raise
        self._record = record
        self._checked = read_back
        if read_back:
            remember(self._sd_uuid, self.target.volume, record)
        if self._area is not None:
            self._area.ended = True  # no late write reaches the committed archive
        self._guard.end_write(store_key(self.target.volume))
        log.info("OVF store committed sd=%s generation=%d store=%d tar_length=%d "
                 "digest=%s", self._sd_uuid, record.generation, self.target.index,
                 tar_length, digest)
        return record

    def replicate(self, check: Check = go_on) -> None:
        """Copy the committed archive into the other stores, oldest first, and
        end the update.

        A failed copy is logged, added to :attr:`replica_errors`, and the
        next store is tried.  If the target does not read back as sealed,
        nothing is copied: the other stores keep the previous archive.

        ``check`` is called before each copy and each of its chunks.  Once
        it raises, no copy starts any more (those stores keep their
        previous archive), and a copy already writing stops there (its
        store stays marked updating, so no reader takes it); both go into
        :attr:`replica_errors`.
        """
        if self._vol is None or self._done or self._record is None:
            raise update_ended()
        source, record = self._vol, self._record
        try:
            with aligned_view(CHUNK) as buf:
                if not self._checked:
                    found = ovfrecord.tar_digest(source, record.tar_length, buf)
                    if found != record.digest:
                        log.error("OVF store sd=%s store=%d reads back as %s, not %s; "
                                  "not copied", self._sd_uuid, self.target.index, found,
                                  record.digest)
                        self.replica_errors.append(
                            f"store {self.target.index} reads back with xxh3_128 {found}, "
                            f"not {record.digest}; the other stores were left as they were")
                        return
                    remember(self._sd_uuid, self.target.volume, record)
                for n, state in enumerate(self._others):
                    if not self._copy(source, state, record, buf, check):
                        left = ", ".join(str(s.index) for s in self._others[n + 1:])
                        if left:
                            self.replica_errors.append(f"store {left} not copied: the "
                                                       "copies were stopped")
                        break
        finally:
            self._finish()

    def abort(self) -> None:
        """End the update uncommitted: the target stays marked updating, so no
        reader ever takes its partial archive.  Idempotent."""
        if not self._done:
            log.warning("OVF update aborted sd=%s generation=%d: store %d stays invalid",
                        self._sd_uuid, self.generation, self.target.index)
        self._finish()

    def _finish(self, end_update: bool = True) -> None:
        if self._done:
            return
        self._done = True
        if self._area is not None:
            self._area.ended = True
        try:
            if self._vol is not None:
                self._vol.close()
        finally:
            self._guard.end_write(store_key(self.target.volume))
            if end_update:
                self._guard.end_update()

    def _mark(self, vol: Volume, info: VolumeInfo) -> None:
        """Zero the head (a plain tar reader now finds no archive) and mark
        the record updating, in one sync."""
        forget(self._sd_uuid, info)
        vol.zero(0, min(HEAD, self._capacity))
        ovfrecord.write(vol, info.size, CommitRecord(
            self.generation, 0, NO_DIGEST, time.time(), updating=True))

    def _seal(self, vol: Volume, area: StoreArea, info: VolumeInfo, tar_length: int,
              digest: str, buf: memoryview | None, check: Check) -> CommitRecord:
        """Zero after the archive, sync, check it (when given ``buf`` to read
        it back through: the held head, the rest from the store), call
        ``check``, write its head (synced, read back), write the record
        (synced).  A failed check leaves the head zero: a plain tar reader
        finds no archive."""
        area.zero(tar_length, min(TAIL_ZERO, self._capacity - tar_length))
        area.flush()
        if buf is not None:
            found = ovfrecord.tar_digest(area, tar_length, buf)
            if found != digest:
                raise ChecksumMismatch(f"the archive written has xxh3_128 {found}, "
                                       f"not {digest}")
        check()
        area.write_head()
        return ovfrecord.write(vol, info.size, CommitRecord(
            self.generation, tar_length, digest, time.time(), updating=False))

    def _copy(self, source: Volume, state: StoreState, record: CommitRecord,
              buf: memoryview, check: Check) -> bool:
        """Copy into one store; False if ``check`` stopped the copies."""
        name = store_key(state.volume)
        check = stopping(check)
        touched = False
        try:
            check()
            self._guard.start_write(name, READ_GRACE, READ_WAIT)
            try:
                check()  # the wait for readers may have been long
                with closing(open_data(state.volume)) as vol:
                    touched = True
                    self._mark(vol, state.volume)
                    area = StoreArea(vol, self._capacity)  # closed with vol
                    pos = 0
                    for chunk in chunks(source, record.tar_length, buf):
                        check()
                        area.write(pos, chunk)
                        pos += len(chunk)
                    copied = self._seal(vol, area, state.volume, record.tar_length,
                                        record.digest, buf, check)
                    remember(self._sd_uuid, state.volume, copied)
            finally:
                self._guard.end_write(name)
        except Stopped as e:
            log.warning("OVF store copies stopped sd=%s generation=%d store=%d vol=%s: %s",
                        self._sd_uuid, self.generation, state.index, name, e.error)
            left = "stays marked updating" if touched else "keeps its previous archive"
            self.replica_errors.append(f"store {state.index} ({name}) {left}: {e.error}")
            return False
        except Exception as e:  # the target is committed: go on with the others
            report = log.warning if isinstance(e, Error) else log.exception
            report("OVF store copy failed sd=%s generation=%d store=%d vol=%s: %s",
                   self._sd_uuid, self.generation, state.index, name, e)
            self.replica_errors.append(f"store {state.index} ({name}): {e}")
            return True
        log.info("OVF store copied sd=%s generation=%d store=%d vol=%s", self._sd_uuid,
                 self.generation, state.index, name)
        return True
