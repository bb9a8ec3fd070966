"""Reading a domain's OVF stores back (blocking; the handlers run these in
the I/O executor): :func:`newest`, the newest verified store to serve
whole; :func:`states`, every store with its record and entry counts; and
:func:`read_member`, one OVF of the newest store.  Receiving a store is
:mod:`stream.ovf`.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from typing import Any

from volume.base import Volume
from volume.errors import InvalidRequest, NotFound, OutOfRange
from volume.fileobj import VolumeReader
from volume.ovfstore import OvfStores, StoreState
from volume.sd import StorageDomain, VolumeInfo

from .wire.errors import WireError
from .wire.manifest import is_ovf_name
from .wire.tarread import BadTar, OvfTarReader


def newest(storage: StorageDomain, image: str | None = None, length: int = 0
           ) -> tuple[StoreState, Volume]:
    """The newest verified store (blocking); the volume is the caller's to close.

    With ``image`` (vdsm's ``GET /`` names a store), it must be one of the
    domain's stores (NotFound) and ``length`` bytes within what every store
    holds (OutOfRange).
    """
    stores = OvfStores.open(storage)
    try:
        if image is not None:
            check_image(storage, stores, image)
            if length > stores.capacity:
                raise OutOfRange(f"{length} bytes asked; the OVF stores of {storage.uuid} "
                                 f"hold {stores.capacity}", stores.capacity)
        found = stores.newest()
    finally:
        stores.close()
    if found is None:
        raise NotFound(f"Storage domain {storage.uuid} has no valid OVF store")
    return found


def check_image(storage: StorageDomain, stores: OvfStores, image: str) -> None:
    """vdsm's forms name an OVF_STORE image: it must be one of the domain's."""
    if image not in {info.img_uuid for info in stores.stores}:
        raise NotFound(f"image {image} is not an OVF_STORE of storage domain "
                       f"{storage.uuid}")


class _Census:
    """Counts a store's entries from the bytes ``states`` hashes anyway.

    Headers only: ``info.json`` is not parsed again (up to 16 MB for 100,000
    entries, parsed for every store at every ``info``, took 80 MiB each, and
    700 MiB for one of tiny values committed before they were refused).  Its
    record verifies the archive is the one the reader accepted whole."""

    def __init__(self, size: int) -> None:
        self._reader = OvfTarReader(max_total=size, ignore_trailing=True, entries_only=True,
                                    committed=True)
        self._error: str | None = None

    def feed(self, data: memoryview) -> None:
        if self._error is None:
            try:
                self._reader.feed(data)
            except BadTar as e:
                self._error = e.detail

    def counts(self) -> dict[str, Any]:
        """``entries`` (tar members, as a PUT's answer counts them) and
        ``ovfs``; None and why, for an archive the reader refuses (a store
        another writer left, say)."""
        try:
            if self._error is None:
                names = [e.name for e in self._reader.finish().entries]
                return {"entries": len(names), "ovfs": sum(map(is_ovf_name, names))}
        except WireError as e:
            self._error = e.detail
        return {"entries": None, "ovfs": None, "entries_error": self._error}


def states(storage: StorageDomain) -> list[dict[str, Any]]:
    """Every store as ``ovf-store/info`` lists it: its record, whether it is
    valid and, for a valid one, how many entries and OVFs it holds."""
    stores = OvfStores.open(storage)
    census: dict[int, _Census] = {}

    def observe(info: VolumeInfo) -> Callable[[memoryview], None]:
        census[id(info)] = found = _Census(info.size)
        return found.feed
    try:
        found = stores.states(observe=observe)
    finally:
        stores.close()
    return [{**s.to_json(), **(census[id(s.volume)].counts() if s.valid else {})}
            for s in found]


def read_member(storage: StorageDomain, name: str) -> bytes:
    """One member of the newest store, found by walking tar headers."""
    # A UUID in any case names the same entity; stores hold canonical names.
    name = name.lower()
    if not is_ovf_name(name):
        raise InvalidRequest(f"{name!r} is not an OVF name (<uuid>.ovf)")
    state, volume = newest(storage)
    try:
        assert state.record is not None
        # Read ahead 1 MiB: members are small, so most seeks stay in the buffer.
        raw = io.BufferedReader(VolumeReader(volume, state.record.tar_length), 1 << 20)
        with tarfile.open(fileobj=raw, mode="r:") as tar:
            try:
                member = tar.getmember(name)
            except KeyError:
                raise NotFound(f"{name} is not in the OVF store of {storage.uuid}") from None
            f = tar.extractfile(member)
            if f is None:
                raise NotFound(f"{name} is not a regular file in the OVF store")
            data: bytes = f.read()
            return data
    finally:
        volume.close()
