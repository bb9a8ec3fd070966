"""What every storage domain type offers, and the record of one volume.

A storage domain has a UUID, a type and a location.  It holds images, each
a chain of volumes, all named by UUIDs that the engine chooses:
``(sd_uuid, img_uuid, vol_uuid)`` names one volume anywhere in the cluster.
The domain keeps each volume's metadata (size, format, parent, content) on
its own storage, so every host that sees the storage sees the same volumes.

Types:

- ``file`` (:mod:`volume.filedomain`): a directory, local or NFS; a volume
  is a data file plus a small JSON metadata file next to it.
- ``block`` (:mod:`volume.blockdomain`): a set of block devices; a volume is
  a region of one device, listed in a metadata area on the first device.
- A later ``managed`` type (managed block storage: a StorPool adapter, a
  local loop-device pool) fits behind the same :class:`StorageDomain`
  protocol: ``create_volume``/``resize_volume``/``delete_volume`` call the
  adapter (``create_volume``, ``extend_volume``, ``delete_volume``), the
  adapter's own database keeps the metadata (so no area on the storage), and
  ``lookup`` attaches the volume (``connect_volume``) and answers a
  :class:`VolumeInfo` whose ``path`` is the whole device it got, with
  ``offset=0`` and ``length=None``.  Nothing above this protocol changes;
  only :data:`volume.domains.OPENERS` gains a ``"managed"`` entry.

All of it is blocking I/O, meant for the daemon's executor.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, ClassVar, Protocol

from .base import Volume
from .errors import InvalidRequest, NotFound
from .region import RegionVolume
from .validate import check_size, check_uuid, parse_enum

log = logging.getLogger(__name__)

MiB = 1 << 20

#: oVirt keeps at most 210 bytes of description in the volume metadata; we
#: keep it as JSON, so allow more, but bound it so a slot cannot overflow.
MAX_DESCRIPTION = 500


class Format(StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"


class Allocation(StrEnum):
    SPARSE = "sparse"
    PREALLOCATED = "preallocated"


class Content(StrEnum):
    """The engine's disk content types (``DiskContentType``)."""

    DATA = "DATA"
    OVF_STORE = "OVF_STORE"
    MEMORY_DUMP_VOLUME = "MEMORY_DUMP_VOLUME"
    MEMORY_METADATA_VOLUME = "MEMORY_METADATA_VOLUME"
    ISO = "ISO"
    HOSTED_ENGINE = "HOSTED_ENGINE"
    HOSTED_ENGINE_SANLOCK = "HOSTED_ENGINE_SANLOCK"
    HOSTED_ENGINE_METADATA = "HOSTED_ENGINE_METADATA"
    HOSTED_ENGINE_CONFIGURATION = "HOSTED_ENGINE_CONFIGURATION"
    BACKUP_SCRATCH = "BACKUP_SCRATCH"


@dataclass(frozen=True)
class VolumeInfo:
    """One volume: what it is, and where its bytes are.

    The bytes are ``[offset, offset+length)`` of ``path`` (a file or a block
    device); ``length=None`` means the whole file, whose size may differ from
    ``size`` (a qcow2 file holds metadata and only the allocated clusters).
    """

    sd_uuid: str
    img_uuid: str
    vol_uuid: str
    #: Virtual size in bytes: what the guest sees.
    size: int
    format: Format
    allocation: Allocation
    content: Content
    parent: str | None
    description: str
    path: str = ""
    offset: int = 0
    length: int | None = None
    #: A file domain's directory: ``path`` lies below it and is opened only
    #: through no symlink there (see :func:`volume.open_volume`).  None for a
    #: region of a registered device.
    within: str | None = None
    #: False while its content is incomplete: a copy into it started and has
    #: not been verified (vdsm's ILLEGAL), so nobody mistakes it for data.
    legal: bool = True

    @property
    def key(self) -> tuple[str, str, str]:
        """``(sd_uuid, img_uuid, vol_uuid)``: the volume anywhere in the cluster."""
        return self.sd_uuid, self.img_uuid, self.vol_uuid

    def meta(self) -> dict[str, Any]:
        """The fields a domain stores (the location is the domain's business)."""
        d = asdict(self)
        for key in ("sd_uuid", "path", "offset", "length", "within"):
            del d[key]
        return d

    @classmethod
    def from_meta(cls, sd_uuid: str, meta: dict[str, Any], path: str = "",
                  offset: int = 0, length: int | None = None,
                  within: str | None = None) -> VolumeInfo:
        return cls(
            sd_uuid=sd_uuid, img_uuid=meta["img_uuid"], vol_uuid=meta["vol_uuid"],
            size=meta["size"], format=Format(meta["format"]),
            allocation=Allocation(meta["allocation"]), content=Content(meta["content"]),
            parent=meta["parent"], description=meta["description"],
            path=path, offset=offset, length=length, within=within,
            legal=bool(meta.get("legal", True)),
        )

    def to_json(self) -> dict[str, Any]:
        return {"sd_uuid": self.sd_uuid, **self.meta(), "path": self.path,
                "offset": self.offset, "length": self.length}


def new_volume(sd_uuid: str, img_uuid: str, vol_uuid: str, size: int, *,
               format: str = Format.RAW, allocation: str = Allocation.SPARSE,
               content: str = Content.DATA, parent: str | None = None,
               description: str = "", legal: bool = True) -> VolumeInfo:
    """Validate the arguments of ``create_volume`` into a location-less record."""
    if type(legal) is not bool:
        raise InvalidRequest(f"legal must be true or false, not {legal!r}")
    if parent is not None:
        parent = check_uuid(parent, "parent volume")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise InvalidRequest(f"description must be a string of at most {MAX_DESCRIPTION} "
                             "characters")
    return VolumeInfo(
        sd_uuid=sd_uuid, img_uuid=check_uuid(img_uuid, "image"),
        vol_uuid=check_uuid(vol_uuid, "volume"), size=check_size(size),
        format=parse_enum(Format, format, "format"),
        allocation=parse_enum(Allocation, allocation, "allocation"),
        content=parse_enum(Content, content, "content type"),
        parent=parent, description=description, legal=legal,
    )


@dataclass(frozen=True)
class Space:
    total: int
    free: int


class StorageDomain(Protocol):
    """A storage domain of any type.  Every method is blocking."""

    @property
    def uuid(self) -> str: ...

    @property
    def type(self) -> str:
        """``"file"`` or ``"block"`` (later also ``"managed"``)."""
        ...

    @property
    def location(self) -> tuple[str, ...]:
        """The directory of a file domain, or the devices of a block domain."""
        ...

    def create_volume(self, img_uuid: str, vol_uuid: str, size: int, *,
                      format: str = Format.RAW, allocation: str = Allocation.SPARSE,
                      content: str = Content.DATA, parent: str | None = None,
                      description: str = "", legal: bool = True) -> VolumeInfo:
        """Create a volume of ``size`` bytes; ``parent`` (a volume of the same
        image) makes it a qcow2 overlay; ``legal`` False marks it incomplete
        from the start (an upload about to fill it).  Conflict if it exists
        already."""
        ...

    def resize_volume(self, img_uuid: str, vol_uuid: str, size: int) -> VolumeInfo:
        """Grow the volume to ``size`` bytes (volumes never shrink)."""
        ...

    def set_legal(self, img_uuid: str, vol_uuid: str, legal: bool) -> VolumeInfo:
        """Mark the volume's content complete (True) or incomplete (False)."""
        ...

    def delete_volume(self, img_uuid: str, vol_uuid: str) -> None:
        """Delete the volume; Conflict while another volume is based on it."""
        ...

    def list_volumes(self, img_uuid: str | None = None) -> list[VolumeInfo]:
        """All volumes (of one image, if given), sorted by image and volume."""
        ...

    def lookup(self, img_uuid: str, vol_uuid: str) -> VolumeInfo:
        """The volume's record, or NotFound."""
        ...

    def space(self) -> Space:
        """Capacity and free space, in bytes."""
        ...

    def check(self) -> None:
        """Raise VolumeError unless the storage is reachable and is this domain."""
        ...


# One lock per domain UUID while any object of the domain holds it.  The
# pool manager opens new domain objects on every map change while requests
# on the old ones still run, so a lock per object would let two of them
# read the same volume table and commit over each other.
_locks: weakref.WeakValueDictionary[str, threading.Lock] = weakref.WeakValueDictionary()
_locks_guard = threading.Lock()


def _domain_lock(sd_uuid: str) -> threading.Lock:
    with _locks_guard:
        lock = _locks.get(sd_uuid)
        if lock is None:
            lock = _locks[sd_uuid] = threading.Lock()
        return lock


class BaseDomain:
    """What the domain types share: identity, location, and a lock.

    The lock is shared by every object of the domain in this process, and
    only orders this process's threads; across hosts, one host changes a
    domain at a time (the engine's SPM role).
    """

    type: ClassVar[str]

    def __init__(self, sd_uuid: str, location: tuple[str, ...]) -> None:
        self._uuid = sd_uuid
        self._location = location
        self._lock = _domain_lock(sd_uuid)

    @property
    def uuid(self) -> str:
        return self._uuid

    @property
    def location(self) -> tuple[str, ...]:
        return self._location

    def create_volume(self, img_uuid: str, vol_uuid: str, size: int, *,
                      format: str = Format.RAW, allocation: str = Allocation.SPARSE,
                      content: str = Content.DATA, parent: str | None = None,
                      description: str = "", legal: bool = True) -> VolumeInfo:
        """See :meth:`StorageDomain.create_volume`."""
        info = new_volume(self._uuid, img_uuid, vol_uuid, size, format=format,
                          allocation=allocation, content=content, parent=parent,
                          description=description, legal=legal)
        return self._create(info)

    def _create(self, info: VolumeInfo) -> VolumeInfo:
        """Create the validated, location-less volume ``info``; return it located."""
        raise NotImplementedError

    def _not_found(self, img: str, vol: str) -> NotFound:
        return NotFound(f"No such volume {img}/{vol} in storage domain {self._uuid}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._uuid} {' '.join(self._location)}>"


def open_data(info: VolumeInfo, readonly: bool = False, *, direct: bool = True) -> Volume:
    """Open the bytes of a volume for I/O: the whole file, or its region.

    A file domain's volume is opened only inside the domain (``info.within``).
    """
    # Imported here: the package's __init__ may one day import this module.
    from . import open_volume

    vol = open_volume(info.path, readonly, direct=direct, within=info.within)
    if info.length is None:
        return vol
    try:
        return RegionVolume(vol, info.offset, info.length)
    except BaseException:
        vol.close()
        raise
