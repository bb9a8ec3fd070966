"""Block storage domains: volumes as regions of registered block devices.

A block domain is an ordered set of block devices.  Each volume is one
region of one device, ``[offset, offset+extent)`` with both aligned to
1 MiB, placed first-fit across the devices in order.  The volume table
lives on the first device (:mod:`volume.blockmeta`); every device carries
a label naming the domain and its index, so any host that is given the
same devices, under any names and in any order, sees the same volumes.

Volumes are raw and always fully reserved: ``sparse`` and
``preallocated`` both get the whole region, which is zeroed on create and
on growth so no volume ever shows a deleted neighbour's data.  qcow2 is
refused: ``qemu-img`` needs a file or a device of its own, not a region.
Growing happens in place, when the space after the region is free.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import uuid as uuidlib
from collections.abc import Sequence
from typing import Any

from . import _linux, blockmeta
from ._oserror import oserrors
from .blockmeta import AREA
from .errors import Conflict, InvalidRequest, NoSpace, VolumeError
from .sd import Allocation, BaseDomain, Format, MiB, Space, VolumeInfo
from .storeguard import check_deletable, check_resizable
from .validate import check_block_devices, check_size, check_uuid

log = logging.getLogger(__name__)

Table = dict[str, Any]


def _round_up(n: int) -> int:
    return (n + MiB - 1) // MiB * MiB


def create_block_domain(devices: Sequence[str], sd_uuid: str) -> BlockDomain:
    """Format ``devices`` as a new, empty block domain.

    Refuses devices that already carry a domain's label: formatting
    destroys the volume table, so wipe the label first to reuse a device.
    The one exception is a format of this same domain on these same
    devices that was cut off before it was whole: that one is redone.
    """
    sd_uuid = check_uuid(sd_uuid, "storage domain")
    devices = check_block_devices(devices)
    with oserrors("create storage domain"):
        labels = []
        for dev in devices:
            with blockmeta.device(dev) as fd:
                labels.append(blockmeta.read_label(fd))
                size = _linux.device_size(fd)
            if size < AREA + MiB:
                raise InvalidRequest(f"device {dev} is too small: {size} bytes")
        if not _unfinished(devices, labels, sd_uuid):
            for dev, label in zip(devices, labels, strict=True):
                if label is not None:
                    raise Conflict(f"device {dev} already belongs to storage domain "
                                   f"{label.get('sd_uuid')}")
        ids = [str(uuidlib.uuid4()) for _ in devices]
        with blockmeta.device(devices[0], write=True) as fd:
            blockmeta.clear_slots(fd)
            blockmeta.write_table(fd, 1, {"sd_uuid": sd_uuid, "devices": ids, "volumes": []})
        # The first device's label last: until it is written, this is no domain.
        for index in reversed(range(len(devices))):
            with blockmeta.device(devices[index], write=True) as fd:
                blockmeta.write_label(fd, {"sd_uuid": sd_uuid, "index": index,
                                           "dev_uuid": ids[index]})
    log.info("created block domain sd=%s devices=%s", sd_uuid, ",".join(devices))
    return BlockDomain(sd_uuid, devices)


def _unfinished(devices: Sequence[str], labels: list[dict[str, Any] | None],
                sd_uuid: str) -> bool:
    """Whether ``devices`` hold a format of ``sd_uuid`` cut off before the
    first device's label, the last write of a format: then this domain
    never was, and formatting the same devices again finishes the work.

    Only the very devices of that format qualify: the first one's table
    names this domain and lists, at each labelled device's index, that
    device's own identity, so no device of a finished domain is taken.
    """
    if labels[0] is not None or all(label is None for label in labels):
        return False
    with blockmeta.device(devices[0]) as fd:
        found = blockmeta.read_table(fd, sd_uuid)
    if found is None:
        return False
    ids = found[1].get("devices")
    if not isinstance(ids, list) or len(ids) != len(devices):
        return False
    return all(label is None or (label.get("sd_uuid") == sd_uuid
                                 and label.get("index") == index
                                 and label.get("dev_uuid") == ids[index])
               for index, label in enumerate(labels))


def open_block_domain(devices: Sequence[str], sd_uuid: str | None = None) -> BlockDomain:
    """Attach to the block domain on ``devices`` (any order); if ``sd_uuid``
    is given, it must be the UUID recorded on them."""
    expected = None if sd_uuid is None else check_uuid(sd_uuid, "storage domain")
    devices = check_block_devices(devices)
    labels = []
    with oserrors("open storage domain"):
        for dev in devices:
            with blockmeta.device(dev) as fd:
                label = blockmeta.read_label(fd)
            if label is None:
                raise InvalidRequest(f"device {dev} is not part of a storage domain")
            expected = expected or label["sd_uuid"]
            if label["sd_uuid"] != expected:
                raise InvalidRequest(f"device {dev} belongs to storage domain "
                                     f"{label['sd_uuid']}, not {expected}")
            labels.append((label, dev))
    labels.sort(key=lambda pair: pair[0]["index"])
    found: str = labels[0][0]["sd_uuid"]
    missing = InvalidRequest(f"storage domain {found}: the {len(devices)} devices given "
                             "are not all of them")
    if [label["index"] for label, _ in labels] != list(range(len(labels))):
        raise missing
    domain = BlockDomain(found, tuple(dev for _, dev in labels))
    if [label["dev_uuid"] for label, _ in labels] != domain._load()[1]["devices"]:
        raise missing
    return domain


class BlockDomain(BaseDomain):
    """A block domain; build it with :func:`create_block_domain` or
    :func:`open_block_domain`."""

    type = "block"

    def __init__(self, sd_uuid: str, devices: tuple[str, ...]) -> None:
        super().__init__(sd_uuid, devices)
        self._devices = devices

    def _load(self) -> tuple[int, Table]:
        with oserrors("read storage domain metadata"), blockmeta.device(self._devices[0]) as fd:
            found = blockmeta.read_table(fd, self._uuid)
        if found is None:
            raise VolumeError(f"storage domain {self._uuid} has no valid volume table")
        return found

    def _commit(self, generation: int, table: Table) -> None:
        with oserrors("write storage domain metadata"), \
                blockmeta.device(self._devices[0], write=True) as fd:
            blockmeta.write_table(fd, generation + 1, table)

    def _info(self, entry: dict[str, Any]) -> VolumeInfo:
        return VolumeInfo.from_meta(self._uuid, entry, path=self._devices[entry["dev"]],
                                    offset=entry["offset"], length=entry["size"])

    @staticmethod
    def _entry(table: Table, img: str, vol: str) -> dict[str, Any] | None:
        for entry in table["volumes"]:
            if entry["img_uuid"] == img and entry["vol_uuid"] == vol:
                return entry  # type: ignore[no-any-return]
        return None

    def _find(self, table: Table, img: str, vol: str) -> dict[str, Any]:
        img, vol = check_uuid(img, "image"), check_uuid(vol, "volume")
        entry = self._entry(table, img, vol)
        if entry is None:
            raise self._not_found(img, vol)
        return entry

    def _sizes(self) -> list[int]:
        """Usable end of each device: its size rounded down to 1 MiB."""
        with oserrors("read device size"):
            sizes = []
            for dev in self._devices:
                with blockmeta.device(dev) as fd:
                    sizes.append(_linux.device_size(fd) // MiB * MiB)
            return sizes

    def _used(self, table: Table, dev: int) -> list[tuple[int, int]]:
        return sorted((e["offset"], e["offset"] + e["extent"])
                      for e in table["volumes"] if e["dev"] == dev)

    def _place(self, table: Table, extent: int) -> tuple[int, int]:
        """First fit: (device index, offset) of a free region of ``extent``."""
        for dev, end in enumerate(self._sizes()):
            pos = AREA
            for start, stop in [*self._used(table, dev), (end, end)]:
                if start - pos >= extent:
                    return dev, pos
                pos = max(pos, stop)
        raise NoSpace(f"no free region of {extent} bytes in storage domain {self._uuid}")

    def _zero(self, dev: int, offset: int, length: int) -> None:
        with oserrors("zero volume"), blockmeta.device(self._devices[dev], write=True) as fd:
            _linux.blkzeroout(fd, offset, length)
            os.fsync(fd)

    def _create(self, info: VolumeInfo) -> VolumeInfo:
        info = dataclasses.replace(info, allocation=Allocation.PREALLOCATED)
        if info.format != Format.RAW or info.parent is not None:
            raise InvalidRequest("block storage domains hold raw volumes without a parent; "
                                 "qcow2 is not supported")
        extent = _round_up(info.size)
        with self._lock:
            generation, table = self._load()
            if self._entry(table, info.img_uuid, info.vol_uuid) is not None:
                raise Conflict(f"Volume {info.img_uuid}/{info.vol_uuid} already exists")
            dev, offset = self._place(table, extent)
            # Zero before the table names the region: a crash in between
            # leaves zeroed free space, never a volume showing old data.
            self._zero(dev, offset, extent)
            entry = {**info.meta(), "dev": dev, "offset": offset, "extent": extent}
            table["volumes"].append(entry)
            self._commit(generation, table)
        log.info("created volume sd=%s img=%s vol=%s size=%d dev=%d offset=%d",
                 self._uuid, info.img_uuid, info.vol_uuid, info.size, dev, offset)
        return self._info(entry)

    def resize_volume(self, img_uuid: str, vol_uuid: str, size: int) -> VolumeInfo:
        size = check_size(size)
        with self._lock:
            generation, table = self._load()
            entry = self._find(table, img_uuid, vol_uuid)
            check_resizable(self._info(entry))
            if size < entry["size"]:
                raise InvalidRequest(f"volume size {entry['size']} cannot shrink to {size}")
            extent = _round_up(size)
            if extent > entry["extent"]:
                start, stop = entry["offset"] + entry["extent"], entry["offset"] + extent
                end = self._sizes()[entry["dev"]]
                clash = [s for s, _ in self._used(table, entry["dev"]) if start <= s < stop]
                if clash or stop > end:
                    raise NoSpace(f"volume {img_uuid}/{vol_uuid} cannot grow in place to "
                                  f"{size} bytes")
                self._zero(entry["dev"], start, stop - start)
            entry.update(size=size, extent=max(extent, entry["extent"]))
            self._commit(generation, table)
        log.info("resized volume sd=%s img=%s vol=%s size=%d", self._uuid,
                 entry["img_uuid"], entry["vol_uuid"], size)
        return self._info(entry)

    def set_legal(self, img_uuid: str, vol_uuid: str, legal: bool) -> VolumeInfo:
        with self._lock:
            generation, table = self._load()
            entry = self._find(table, img_uuid, vol_uuid)
            entry["legal"] = legal
            self._commit(generation, table)
        log.info("volume sd=%s img=%s vol=%s legal=%s", self._uuid, img_uuid, vol_uuid, legal)
        return self._info(entry)

    def delete_volume(self, img_uuid: str, vol_uuid: str) -> None:
        with self._lock:
            generation, table = self._load()
            entry = self._find(table, img_uuid, vol_uuid)
            check_deletable(self._info(entry))
            table["volumes"].remove(entry)
            self._commit(generation, table)
        log.info("deleted volume sd=%s img=%s vol=%s", self._uuid, entry["img_uuid"],
                 entry["vol_uuid"])

    def list_volumes(self, img_uuid: str | None = None) -> list[VolumeInfo]:
        if img_uuid is not None:
            img_uuid = check_uuid(img_uuid, "image")
        entries = self._load()[1]["volumes"]
        return sorted((self._info(e) for e in entries
                       if img_uuid is None or e["img_uuid"] == img_uuid),
                      key=lambda v: (v.img_uuid, v.vol_uuid))

    def lookup(self, img_uuid: str, vol_uuid: str) -> VolumeInfo:
        table = self._load()[1]
        entry = self._find(table, img_uuid, vol_uuid)
        self._check_fit([entry])
        return self._info(entry)

    def _check_fit(self, entries: list[dict[str, Any]]) -> None:
        """VolumeError if a volume of ``entries`` ends past its device: the
        device shrank (an LV reduced, a LUN remapped) under the volume."""
        sizes: dict[int, int] = {}
        with oserrors("read device size"):
            for dev in sorted({e["dev"] for e in entries}):
                with blockmeta.device(self._devices[dev]) as fd:
                    sizes[dev] = _linux.device_size(fd)
        for e in entries:
            if e["offset"] + e["size"] > sizes[e["dev"]]:
                log.error("volume %s/%s of sd=%s ends at %d, past the end of device %s "
                          "(%d bytes)", e["img_uuid"], e["vol_uuid"], self._uuid,
                          e["offset"] + e["size"], self._devices[e["dev"]], sizes[e["dev"]])
                raise VolumeError(f"device {e['dev']} of storage domain {self._uuid} shrank: "
                                  f"volume {e['img_uuid']}/{e['vol_uuid']} no longer fits")

    def space(self) -> Space:
        total = sum(end - AREA for end in self._sizes())
        used = sum(e["extent"] for e in self._load()[1]["volumes"])
        # Volumes past the end of a device that shrank count as used too.
        return Space(total, max(0, total - used))

    def check(self) -> None:
        try:
            for index, dev in enumerate(self._devices):
                with blockmeta.device(dev) as fd:
                    label = blockmeta.read_label(fd)
                if label is None or label.get("sd_uuid") != self._uuid \
                        or label.get("index") != index:
                    raise VolumeError(f"device {index} of storage domain {self._uuid} "
                                      "lost its label")
            self._check_fit(self._load()[1]["volumes"])
        except OSError as e:
            log.warning("domain check failed sd=%s: %s", self._uuid, e)
            raise VolumeError(f"storage domain {self._uuid} is unreachable") from e
