"""Crash-safe OVF_STORE volumes: the VM configurations of a storage domain.

oVirt rewrites each store in place with ``dd`` and keeps "is this store
whole" only in the volume description, which hosted-engine never reads: it
takes the first store it finds and untars it.  A cut-off update there is a
half archive that looks like a whole one.  Here every store ends in a
commit record (:mod:`volume.ovfrecord`), so a store speaks for itself;
and for readers that know no record (hosted-engine's ``dd | tar``), a
store's first block is zeros while it is written, an empty archive to
tar, until the rest is synced (:mod:`volume.ovfupdate`).

One incoming archive updates all stores of a domain:

1. :meth:`OvfStores.begin` picks the target, the store updated longest
   ago (never-updated or invalid ones first), zeroes its first block,
   marks its record "updating" and syncs.  From here the target is
   invalid; the others are untouched.
2. The caller streams the tar into :attr:`Update.volume`, which ends where
   the record begins, so an archive too large gets OutOfRange.
3. :meth:`Update.seal` zeroes the 1 MiB after the tar, syncs, (with
   ``read_back``) reads the tar back and checks its xxh3-128, writes the
   tar's first block (synced, read back), writes the record and syncs.
   The daemon answers here, the archive durable.
4. :meth:`Update.replicate` then reads the target back (if step 3 did
   not) and only if it matches copies the tar into the others, oldest
   first, each with the same mark, write, sync, verify, record, sync.  The
   store that was the newest valid one comes last, so the previous archive
   survives until the new one is on at least one other store (oVirt's
   order).  :meth:`Update.commit` is steps 3 and 4 in one call.

Before an update, every store is checked to choose the target; a store
this process has read back under the same record is not hashed again
(see ``volume._ovfguard.verified``), except the one that is to stay the
good copy while the target is overwritten: rotten since its last check,
it would leave no valid store should the update fail.  It is hashed
again unless read back within CONFIRM_TRUST seconds (and, a file, not
written since).  Readers always hash what they serve.

A SIGKILL or power loss at any instant leaves the newest valid store
holding the previous generation or the new one, whole and verified (with
a single store there is no other copy: from :meth:`OvfStores.begin` to
the commit none is valid, which is why the daemon stages such a domain's
body and begins only once it is whole and valid, ``stream.ovfstage``).
A store is read only through a record and a digest that match, and,
within this daemon, never while an update writes it (:mod:`volume._ovfguard`).
The write half lives in :mod:`volume.ovfupdate`, the check of one store
(:class:`StoreState`) in :mod:`volume.ovfstate`.

Why zero 1 MiB after the tar: ``tar`` stops at the end-of-archive marker
(1024 zero bytes) the producer writes, so for oVirt's readers that is
enough.  But a shorter archive over a longer one leaves the old members
right behind the marker, where ``tar --ignore-zeros``, a reader that
tolerates a missing marker, or a person with ``hexdump`` meets them.
Zeroing 1 MiB clears what such a reader meets first, for one bounded
extra write per store; zeroing all the rest of a 128 MiB store would cost
far more than the archive itself (typically a few MiB) on every update.
Older bytes further on stay; no reader here looks past the marker.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Callable
from contextlib import closing

from ._ovfguard import DomainGuard, ReadHold, guard, store_key
from .base import Volume
from .errors import Conflict, Error, InvalidRequest, NotFound, StoreUnavailable
from .ovfrecord import CHUNK, RECORD_SIZE, CommitRecord, aligned_view, record_offset
from .ovfstate import CONFIRM_TRUST, Observe, StoreState, age, confirm_kept, verify
from .ovfupdate import Update, next_generation
from .region import RegionVolume
from .sd import Allocation, Content, Format, MiB, StorageDomain, VolumeInfo, open_data

__all__ = ["DEFAULT_COUNT", "DEFAULT_SIZE", "RECORD_SIZE", "CommitRecord", "OvfStores",
           "StoreState", "Update", "ensure_stores"]

log = logging.getLogger(__name__)

DEFAULT_COUNT = 2  # oVirt's StorageDomainOvfStoreCount
MAX_COUNT = 16  # the engine's limit for that setting
DEFAULT_SIZE = 128 * MiB  # oVirt's OVF_STORE disks; about 6,400 OVFs of 20 KiB fit
MIN_SIZE = 1 * MiB
# uuid5 namespace of the stores this module names (see ensure_stores).
_NAMESPACE = uuid.UUID("dfbbf365-4a57-45e6-a4fb-66a3f94004aa")


def _list_stores(storage: StorageDomain) -> list[VolumeInfo]:
    """The domain's usable OVF_STORE volumes, sorted by image and volume UUID."""
    found = []
    for info in storage.list_volumes():
        if info.content != Content.OVF_STORE:
            continue
        if info.format != Format.RAW or info.size < MIN_SIZE:
            log.warning("ignoring OVF_STORE volume sd=%s vol=%s format=%s size=%d",
                        storage.uuid, store_key(info), info.format, info.size)
            continue
        found.append(info)
    return found


def check_store_layout(count: object, size: object) -> None:
    """Refuse an OVF store count or size :func:`ensure_stores` cannot make."""
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_COUNT:
        raise InvalidRequest(f"OVF store count must be 1 to {MAX_COUNT}, not {count!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < MIN_SIZE \
            or size % RECORD_SIZE:
        raise InvalidRequest(f"OVF store size must be a multiple of {RECORD_SIZE} bytes, "
                             f"at least {MIN_SIZE}, not {size!r}")


def ensure_stores(storage: StorageDomain, count: int = DEFAULT_COUNT,
                  size: int = DEFAULT_SIZE) -> list[VolumeInfo]:
    """Create OVF_STORE volumes until the domain has ``count``; return them all.

    The UUIDs of the stores made here derive from the domain's and an index
    (uuid5), so two callers racing each other make the same volumes, not
    four.  The description is oVirt's, which hosted-engine's scan for a
    store requires.  Idempotent; stores beyond ``count`` are kept.
    """
    check_store_layout(count, size)
    stores = _list_stores(storage)
    taken = {store_key(info) for info in stores}
    description = json.dumps({"Disk Description": "OVF_STORE",
                              "Storage Domains": [{"uuid": storage.uuid}]})
    for index in range(MAX_COUNT):
        if len(stores) >= count:
            break
        img, vol = (str(uuid.uuid5(_NAMESPACE, f"{storage.uuid}/{index}/{part}"))
                    for part in ("image", "volume"))
        if f"{img}/{vol}" in taken:
            continue
        try:
            info = storage.create_volume(
                img, vol, size, format=Format.RAW, allocation=Allocation.PREALLOCATED,
                content=Content.OVF_STORE, description=description)
            log.info("created OVF store sd=%s vol=%s/%s size=%d", storage.uuid, img, vol, size)
        except Conflict:
            info = storage.lookup(img, vol)  # made meanwhile by another caller
        stores.append(info)
    return sorted(stores, key=lambda v: (v.img_uuid, v.vol_uuid))


class _ReadView(RegionVolume):
    """The archive of a store, read-only; closing it lets updates write the
    store.  A read after an update cut the reader off raises Conflict."""

    def __init__(self, inner: Volume, length: int, owner: DomainGuard, hold: ReadHold) -> None:
        super().__init__(inner, 0, length)
        self._owner: DomainGuard | None = owner
        self._hold = hold

    def readinto(self, offset: int, buf: memoryview) -> int:
        owner = self._owner
        if owner is None:  # closed: the inner volume says so
            return super().readinto(offset, buf)
        with owner.reading(self._hold):
            return super().readinto(offset, buf)

    def close(self) -> None:
        super().close()
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.remove_reader(self._hold)


class OvfStores:
    """The OVF stores of one domain, as listed when opened.

    Holds no volume open between calls; every method is blocking.
    """

    def __init__(self, storage: StorageDomain, stores: list[VolumeInfo]) -> None:
        self._sd_uuid = storage.uuid
        self._stores = stores
        self._guard = guard(storage.uuid)

    @classmethod
    def open(cls, storage: StorageDomain) -> OvfStores:
        return cls(storage, _list_stores(storage))

    @property
    def stores(self) -> list[VolumeInfo]:
        return list(self._stores)

    @property
    def capacity(self) -> int:
        """The largest archive every store can hold (0 without stores)."""
        return min((record_offset(info.size) for info in self._stores), default=0)

    def states(self, trusted: bool = False, observe: Observe | None = None
               ) -> list[StoreState]:
        """Every store, its record checked and its archive read back and hashed
        (``trusted``: unless this process did so under the same record).
        ``observe(info)``, if given, returns what sees each archive's bytes
        as they are hashed (a caller counting its entries); it implies
        ``trusted=False``."""
        with aligned_view(CHUNK) as buf:
            trust = math.inf if trusted and observe is None else 0.0
            return [self._state(i, info, buf, trust, observe)
                    for i, info in enumerate(self._stores)]

    def _state(self, index: int, info: VolumeInfo, buf: memoryview,
               trusted: float = 0.0, observe: Observe | None = None) -> StoreState:
        try:
            with closing(open_data(info, readonly=True)) as vol:
                record, error = verify(vol, self._sd_uuid, info, buf, trusted, observe)
        except Error as e:
            log.warning("cannot read OVF store sd=%s vol=%s: %s", self._sd_uuid, store_key(info), e)
            return StoreState(index, info, None, False, f"cannot read the store: {e}")
        if error is not None:
            log.debug("OVF store sd=%s vol=%s is not valid: %s", self._sd_uuid,
                      store_key(info), error)
        return StoreState(index, info, record, error is None, error)

    def newest(self) -> tuple[StoreState, Volume] | None:
        """The valid store of the highest generation and a read-only view of
        its archive (close it); None if no store is valid.

        The stores are held as read (see :mod:`volume._ovfguard`) from
        before they are verified, so an update in this daemon cannot
        change them in between.  A store it is writing just now is left
        out: with two stores or more it is never the only valid one.
        """
        held = [(i, info, hold) for i, info in enumerate(self._stores)
                if (hold := self._guard.add_reader(store_key(info))) is not None]
        kept: ReadHold | None = None
        try:
            with aligned_view(CHUNK) as buf:
                checked = []
                for i, info, hold in held:
                    try:
                        with self._guard.reading(hold):
                            checked.append((self._state(i, info, buf), hold))
                    except Conflict:  # cut off: an update is about to write it
                        continue
            valid = [(s, hold) for s, hold in checked if s.valid]
            if not valid:
                return None
            best, hold = max(valid, key=lambda found: age(found[0]))
            assert best.record is not None
            vol = open_data(best.volume, readonly=True)
            try:
                view = _ReadView(vol, best.record.tar_length, self._guard, hold)
            except BaseException:
                vol.close()
                raise
            kept = hold  # it now belongs to the view
            return best, view
        finally:
            for _, _, hold in held:
                if hold is not kept:
                    self._guard.remove_reader(hold)


    def begin(self, at_least: int = 1,
              before_mark: Callable[[int], None] | None = None) -> Update:
        """Start an update: the target is marked updating (and synced) on return.
        Its generation is ``at_least`` if the stores' records would give less
        (an archive kept for that number, whose store lost its record).
        ``before_mark(generation)``, if given, is called with it before any
        store is touched (if it raises, none is).

        NotFound without stores; Conflict while another update of the
        domain runs in this daemon.
        """
        if not self._stores:
            raise NotFound(f"storage domain {self._sd_uuid} has no OVF_STORE volumes")
        self._guard.start_update()
        try:
            # Trusted: the stores this daemon wrote or read back are not
            # hashed again to sort them ...
            order = sorted(self.states(trusted=True), key=age)
            # ... but before a valid store is overwritten, the copy that is
            # to stay is read back unless checked moments ago: one that
            # rotted since would leave no good store if this update fails.
            with aligned_view(CHUNK) as buf:
                order = confirm_kept(order, lambda s: self._state(s.index, s.volume, buf,
                                                                  CONFIRM_TRUST))
            if before_mark is not None:
                before_mark(max(at_least, next_generation(order)))
            return self._start(order, at_least)
        except BaseException:
            self._guard.end_update()
            raise

    def _start(self, order: list[StoreState], at_least: int) -> Update:
        """The update of the first store in ``order`` that opens.  An
        invalid store that cannot be opened (its file gone) is passed
        over; a valid one is the target only while another valid store
        stays, so that a failed update never takes the last good copy."""
        failed: list[str] = []
        for i, target in enumerate(order):
            rest = order[:i] + order[i + 1:]
            if i and target.valid and not any(s.valid for s in rest):
                break
            try:
                return Update(self._sd_uuid, self._guard, [target, *rest], self.capacity,
                              at_least)
            except Conflict:
                raise
            except Error as e:
                if target.valid:
                    raise
                failed.append(f"store {store_key(target.volume)}: {e}")
        raise StoreUnavailable(
            f"the OVF stores of storage domain {self._sd_uuid} cannot be updated without "
            f"risking the last valid one ({'; '.join(failed)}); repair or remove the "
            "broken store")

    def close(self) -> None:
        """Nothing stays open between calls; here for ``closing()``."""
