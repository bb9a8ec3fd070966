"""Who is reading and writing the OVF stores of a domain, in this process.

The commit record makes a store safe against crashes, but not against a
reader streaming a store while an update in the same daemon rewrites it:
the reader verified the record, then gets bytes of the next archive.  The
guard closes that window:

- one update at a time per domain (a second one is refused with
  Conflict, as the engine's "OVF data is currently being updated");
- an update waits for the readers of a store to finish before it marks
  the store updating, and a reader never starts on a store being written;
- but only for a while: a reader still there after the grace (a client
  downloading slowly, or not reading at all) is cut off.  Its next read
  fails, and the writer goes on once no read of that store is under way.
  A store being rewritten holds an older generation than the one just
  committed, so the slow reader loses nothing it could not read again;
  waiting for it instead would keep the domain's updates waiting (and
  answered 409) for as long as that client likes.

Across hosts only the SPM writes, and the order of an update keeps the
newest store untouched until another one is committed; a reader on
another host can hash what it streams and compare with the record.
"""

from __future__ import annotations

import logging
import math
import os
import stat
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import Conflict
from .ovfrecord import CommitRecord
from .sd import VolumeInfo

log = logging.getLogger(__name__)


def store_key(info: VolumeInfo) -> str:
    """How the guard names a store."""
    return f"{info.img_uuid}/{info.vol_uuid}"


class ReadHold:
    """One reader of one store: :meth:`DomainGuard.add_reader` gives it, and
    every read of the store goes through :meth:`DomainGuard.reading`."""

    __slots__ = ("busy", "key", "revoked")

    def __init__(self, key: str) -> None:
        self.key = key
        #: Cut off by a writer: every further read fails.
        self.revoked = False
        #: Reads under way.
        self.busy = 0


class DomainGuard:
    """Readers and the writer of one domain's stores, by store key."""

    def __init__(self, sd_uuid: str) -> None:
        self._sd_uuid = sd_uuid
        self._cond = threading.Condition()
        self._updating = False
        self._holds: dict[str, set[ReadHold]] = {}
        self._writing: set[str] = set()

    def start_update(self) -> None:
        with self._cond:
            if self._updating:
                raise Conflict(f"the OVF stores of storage domain {self._sd_uuid} are "
                               "being updated")
            self._updating = True

    def end_update(self) -> None:
        with self._cond:
            self._updating = False

    def start_write(self, key: str, grace: float, busy_wait: float | None = None) -> None:
        """Keep new readers off ``key``, give its readers up to ``grace``
        seconds to finish, cut off those still there, and wait up to
        ``busy_wait`` seconds (default: ``grace``) for their reads under
        way to return; Conflict if one does not (the storage hangs).

        New readers are refused from the start, not once the old ones are
        gone: readers that come and go in turn would otherwise starve it.
        """
        with self._cond:
            self._writing.add(key)
            holds = self._holds.get(key, set())
            if not self._cond.wait_for(lambda: not holds, grace):
                for hold in holds:
                    if not hold.revoked:
                        hold.revoked = True
                        log.warning("OVF store %s of domain %s: a reader still there after "
                                    "%.0f s is cut off for an update", key, self._sd_uuid,
                                    grace)
                wait = grace if busy_wait is None else busy_wait
                if not self._cond.wait_for(lambda: not any(h.busy for h in holds), wait):
                    self._writing.discard(key)
                    raise Conflict(f"OVF store {key} is being read, and a read has not "
                                   f"returned for {wait:.0f} s")

    def end_write(self, key: str) -> None:
        with self._cond:
            self._writing.discard(key)

    def add_reader(self, key: str) -> ReadHold | None:
        """Hold ``key`` as read; None while the store is being written."""
        with self._cond:
            if key in self._writing:
                return None
            hold = ReadHold(key)
            self._holds.setdefault(key, set()).add(hold)
            return hold

    def remove_reader(self, hold: ReadHold) -> None:
        with self._cond:
            holds = self._holds.get(hold.key)
            if holds is not None:
                holds.discard(hold)
                if not holds:
                    del self._holds[hold.key]
            self._cond.notify_all()

    @contextmanager
    def reading(self, hold: ReadHold) -> Iterator[None]:
        """One read of ``hold``'s store; Conflict once a writer cut it off."""
        with self._cond:
            if hold.revoked:
                raise Conflict(f"OVF store {hold.key} of domain {self._sd_uuid} is being "
                               "replaced by a newer archive; read the stores again")
            hold.busy += 1
        try:
            yield
        finally:
            with self._cond:
                hold.busy -= 1
                self._cond.notify_all()


# One guard per domain while anything holds it (an OvfStores, an update, a
# reader's view); weak, like the shared locks of volume._direct.
_guards: weakref.WeakValueDictionary[str, DomainGuard] = weakref.WeakValueDictionary()
_guards_lock = threading.Lock()


def guard(sd_uuid: str) -> DomainGuard:
    with _guards_lock:
        found = _guards.get(sd_uuid)
        if found is None:
            found = _guards[sd_uuid] = DomainGuard(sd_uuid)
        return found


# Stores whose archive this process has read back and found matching their
# record, by (domain, store key).  Only an update's choice of target trusts
# it (readers always hash what they serve): it spares re-reading every
# store before each update.  A store's entry goes when an update marks it,
# and any change of its record (another host's update, which marks it
# first) no longer matches the entry, so only rot under an unchanged
# record escapes it, and a reader still refuses such a store.
#
# Each entry keeps when, and the file's identity and times then: a write
# to a file volume by anything but this daemon changes those, so it is
# no longer trusted (a block device's node shows no writes; there only
# ``within`` bounds the trust).
_verified: dict[tuple[str, str], tuple[CommitRecord, float, tuple[int, ...] | None]] = {}
_verified_lock = threading.Lock()


def signature(info: VolumeInfo) -> tuple[int, ...] | None:
    """A file's identity and times; None for anything else (a device node's
    times move with writes anywhere on the device, this daemon's too)."""
    try:
        st = os.lstat(info.path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def remember(sd_uuid: str, info: VolumeInfo, record: CommitRecord,
             before: tuple[int, ...] | None = None) -> None:
    """``info``'s archive was just read back (or written) under ``record``;
    ``before``: its :func:`signature` taken before that read, if any."""
    now = signature(info)
    if before is not None and now != before:  # written while it was read
        forget(sd_uuid, info)
        return
    found = (record, time.monotonic(), now)
    with _verified_lock:
        _verified[sd_uuid, store_key(info)] = found


def forget(sd_uuid: str, info: VolumeInfo) -> None:
    with _verified_lock:
        _verified.pop((sd_uuid, store_key(info)), None)


def verified(sd_uuid: str, info: VolumeInfo, record: CommitRecord,
             within: float = math.inf) -> bool:
    """Whether this process read back ``info``'s archive under ``record``,
    ``within`` seconds ago at most, and (a file) nothing wrote it since."""
    with _verified_lock:
        found = _verified.get((sd_uuid, store_key(info)))
    return found is not None and found[0] == record \
        and time.monotonic() - found[1] <= within and found[2] == signature(info)
