"""What nothing but the daemon's OVF store update may do to an OVF store.

A store's bytes end with its commit record, and a reader takes the newest
store whose record and tar verify (``ovfstore``).  A transfer writing one,
a resize or a delete would each lose a copy of the domain's OVFs, maybe
the last good one; oVirt allows none of them either.  Each guard raises
Forbidden (403) for a store and passes any other volume.  Reading a store
through a ticket is allowed.
"""

from __future__ import annotations

from .errors import Forbidden
from .sd import Content, VolumeInfo


def _refuse_store(info: VolumeInfo, why: str) -> None:
    if info.content == Content.OVF_STORE:
        raise Forbidden(f"Volume {info.img_uuid}/{info.vol_uuid} of storage domain "
                        f"{info.sd_uuid} is an OVF store{why}")


def check_write_target(info: VolumeInfo) -> None:
    """A write ticket or a copy job into it: only an update writes a store."""
    _refuse_store(info, f": only an OVF store update (PUT /domains/{info.sd_uuid}/ovf-store) "
                        "writes it")


def check_resizable(info: VolumeInfo) -> None:
    """A resize: its commit record is its last 4 KiB."""
    _refuse_store(info, ", whose size is fixed: its commit record is at its end")


def check_deletable(info: VolumeInfo) -> None:
    """A delete: the daemon keeps each store a full copy of the OVFs."""
    _refuse_store(info, ": the daemon manages the domain's OVF_STORE volumes, and deleting "
                        "one loses a copy of the domain's OVFs")
