"""One OVF store as read and verified: :class:`StoreState`, made by
:func:`verify` (the commit record read, the archive hashed unless this
process already did so under the same record), and :func:`age`, the
order in which an update picks its target and a reader the newest store.
The protocol they check is in :mod:`volume.ovfstore`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import ovfrecord
from ._ovfguard import forget, remember, signature, store_key, verified
from .base import Volume
from .ovfrecord import CommitRecord, record_offset, tar_digest
from .sd import VolumeInfo

log = logging.getLogger(__name__)

#: Seconds a store read back stays trusted as the copy an update keeps (see
#: OvfStores.begin).  Hashing it before every update costs a read of the
#: whole archive: a 212 MB store's PUT went from 0.2 to 0.36 s.  An engine
#: pushes a domain hourly, so its updates still hash it; only a burst of
#: updates within a minute trusts the check made by the one before (whose
#: copy wrote and read back that very store).  What escapes: a block
#: store rotting within that minute, and then a failed update.
CONFIRM_TRUST = 60.0

#: Given a store, what sees its archive's bytes in order (see OvfStores.states).
Observe = Callable[[VolumeInfo], Callable[[memoryview], None]]


@dataclass(frozen=True)
class StoreState:
    """One store as read and verified just now."""

    #: Position in :meth:`OvfStores.states` (stores sorted by UUIDs).
    index: int
    volume: VolumeInfo
    #: The record, if one decodes (it may say "updating"); None if the area
    #: is zero (never updated) or does not verify.
    record: CommitRecord | None
    #: The record is committed and the tar matches its digest.
    valid: bool
    #: Why the store is not valid; None when it is.
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "img_uuid": self.volume.img_uuid,
                "vol_uuid": self.volume.vol_uuid, "size": self.volume.size,
                "valid": self.valid, "error": self.error,
                "record": None if self.record is None else self.record.to_json()}


def age(state: StoreState) -> tuple[int, int, float, int]:
    """Sort key, oldest first: invalid stores, then valid ones by generation
    and commit time.  Generation before time: hosts' clocks disagree."""
    if not state.valid or state.record is None:
        return (0, 0, 0.0, state.index)
    return (1, state.record.generation, state.record.committed_at, state.index)


def verify(vol: Volume, sd_uuid: str, info: VolumeInfo, buf: memoryview,
           trusted: float, observe: Observe | None = None
           ) -> tuple[CommitRecord | None, str | None]:
    """The store's record and, if it is not valid, why.  ``trusted``: for
    how many seconds an archive this process read back under the same
    record (and, a file, nothing wrote since) needs no hashing again; 0:
    hash it now.
    ``observe`` makes an observer of the archive's bytes as they are hashed."""
    record, error = ovfrecord.read(vol, info.size)
    if record is None:
        return None, error
    if record.updating:
        return record, f"the update to generation {record.generation} did not complete"
    if record.tar_length > record_offset(info.size):
        return record, "the archive length exceeds the store"
    if trusted and verified(sd_uuid, info, record, trusted):
        return record, None
    seen = observe(info) if observe is not None else None
    before = signature(info)  # another process writing it meanwhile is seen
    if tar_digest(vol, record.tar_length, buf, seen) != record.digest:
        forget(sd_uuid, info)
        return record, "archive checksum mismatch"
    remember(sd_uuid, info, record, before)
    return record, None


def confirm_kept(order: list[StoreState],
                 recheck: Callable[[StoreState], StoreState]) -> list[StoreState]:
    """``order`` (oldest first) again, once a valid store other than the
    first valid one (the target, unless invalid ones go first) is known
    valid by ``recheck``, newest first; those found bad sort first."""
    target = next((s for s in order if s.valid), None)
    if target is None:
        return order
    fresh = list(order)
    for i in sorted((i for i, s in enumerate(order) if s.valid and s is not target),
                    key=lambda i: age(order[i]), reverse=True):
        fresh[i] = recheck(order[i])
        if fresh[i].valid:
            break
        log.error("OVF store vol=%s went bad since it was checked: %s",
                  store_key(order[i].volume), fresh[i].error)
    return sorted(fresh, key=age)
