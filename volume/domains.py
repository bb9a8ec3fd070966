"""Storage domains known to this host, and where a ticket may point.

A file domain is a directory; a block domain is a set of registered block
devices (its ``path`` is the first device, which holds the volume table).
A ticket names its volume either by path or by UUIDs:

- a path is accepted only when its real path (after symlinks) lies inside
  a file domain's directory, as a regular file with one link (opened
  later, on the first request, through no symlink: :func:`volume.open_volume`),
  or is one of a domain's registered devices
  (:meth:`DomainRegistry.resolve`), a device for reading only: it holds
  the domain's label, volume table, OVF stores and every volume;
- ``(sd_uuid, img_uuid, vol_uuid)`` is looked up in the domain's own
  metadata (:meth:`DomainRegistry.volume`), which also says where the
  bytes are (:func:`volume.sd.open_data` opens them).

Either way, a transfer never writes an OVF store (:func:`volume.storeguard.check_write_target`):
only the store update protocol does, which keeps the last good one.

The registry opens each domain's storage (:data:`OPENERS`, by type) the
first time a volume is looked up, not when the domain is added: a domain
that is unreachable at startup must not stop the daemon.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field

from . import _confined
from ._oserror import oserrors
from .blockdomain import open_block_domain
from .durable import TMP_PREFIX, makedirs_durable
from .errors import Forbidden, InvalidRequest, NotFound
from .filedomain import create_file_domain, open_file_domain
from .filerecords import DOMAIN_FILE, IMAGES, META_SUFFIX
from .sd import StorageDomain, VolumeInfo
from .storeguard import check_write_target
from .validate import check_uuid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Domain:
    uuid: str
    type: str  # "file" or "block"
    path: str
    devices: tuple[str, ...] = field(default=())

    def info(self) -> dict[str, object]:
        return {"uuid": self.uuid, "type": self.type, "path": self.path,
                "devices": list(self.devices)}

    @classmethod
    def of(cls, storage: StorageDomain) -> Domain:
        """The registry record of an opened domain."""
        if storage.type == "file":
            return cls(storage.uuid, storage.type, storage.location[0])
        return cls(storage.uuid, storage.type, storage.location[0], storage.location)


def _open_file(d: Domain) -> StorageDomain:
    return open_file_domain(d.path, d.uuid)


def _open_block(d: Domain) -> StorageDomain:
    return open_block_domain(d.devices, d.uuid)


#: How to attach to the storage of each domain type.  A managed block
#: storage type (see :mod:`volume.sd`) adds its opener here.
OPENERS: dict[str, Callable[[Domain], StorageDomain]] = {
    "file": _open_file,
    "block": _open_block,
}


def open_storage(domain: Domain) -> StorageDomain:
    """Attach to a domain's storage, checking its location and identity.

    InvalidRequest for an unknown type, a location that does not exist or
    is not a directory or block device, or storage of another domain.
    """
    opener = OPENERS.get(domain.type)
    if opener is None:
        raise InvalidRequest(f"storage domain {domain.uuid}: unknown type {domain.type!r}; "
                             f"expected one of {', '.join(sorted(OPENERS))}")
    return opener(domain)


class DomainRegistry:
    def __init__(self) -> None:
        _confined.check_proc()  # once, here, rather than at each volume
        self._domains: dict[str, Domain] = {}
        self._storage: dict[str, StorageDomain] = {}
        self._lock = threading.Lock()

    def add(self, domain: Domain) -> None:
        with self._lock:
            self._domains[domain.uuid] = domain
            self._storage.pop(domain.uuid, None)

    def attach(self, storage: StorageDomain) -> Domain:
        """Register an already opened domain; returns its record."""
        domain = Domain.of(storage)
        with self._lock:
            self._domains[domain.uuid] = domain
            self._storage[domain.uuid] = storage
        return domain

    def get(self, sd_uuid: str) -> Domain:
        try:
            return self._domains[sd_uuid]
        except KeyError:
            raise NotFound(f"No such storage domain {sd_uuid}") from None

    def all(self) -> list[Domain]:
        return list(self._domains.values())

    def storage(self, sd_uuid: str) -> StorageDomain:
        """The opened storage of a registered domain.  Blocking."""
        sd_uuid = check_uuid(sd_uuid, "storage domain")
        with self._lock:
            storage = self._storage.get(sd_uuid)
        if storage is not None:
            return storage
        domain = self.get(sd_uuid)
        storage = open_storage(domain)
        with self._lock:
            if self._domains.get(sd_uuid) is domain:
                storage = self._storage.setdefault(sd_uuid, storage)
        log.debug("opened storage domain %s", storage)
        return storage

    def volume(self, sd_uuid: str, img_uuid: str, vol_uuid: str) -> VolumeInfo:
        """Look a ticket's volume up by UUIDs.  Blocking: run it in the executor."""
        img_uuid = check_uuid(img_uuid, "image")
        vol_uuid = check_uuid(vol_uuid, "volume")
        return self.storage(sd_uuid).lookup(img_uuid, vol_uuid)

    def resolve(self, path: str, write: bool = False) -> tuple[Domain, str]:
        """Return (domain, real path) for a ticket path, or refuse it; ``write``:
        the ticket allows writing (see :func:`volume.storeguard.check_write_target`).

        Blocking (realpath, stat, a volume's metadata): run it in the I/O executor.
        """
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
        except FileNotFoundError:
            raise InvalidRequest(f"Invalid ticket: {path} does not exist") from None
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise InvalidRequest(
                f"Invalid ticket: {path} is neither a regular file nor a block device"
            )
        for d in self.all():
            if stat.S_ISBLK(st.st_mode):
                if any(os.path.realpath(dev) == real for dev in d.devices):
                    if write:
                        raise Forbidden(
                            f"Invalid ticket: {path} is a device of block storage domain "
                            f"{d.uuid}, which holds its label, volume table and OVF stores; "
                            "a ticket may only read it: name a volume by sd_id, img_id "
                            "and vol_id to write one")
                    return d, real
            elif d.type == "file":
                images = os.path.join(os.path.realpath(d.path), IMAGES)
                if real.startswith(images + os.sep):
                    if _is_metadata(real):
                        raise Forbidden(f"Invalid ticket: {path} is metadata of storage "
                                        f"domain {d.uuid}, not an image")
                    with oserrors("check the image"):
                        _confined.check_file(d.path, real, "image")  # a hard link?
                    if write and (info := self._volume_at(d, real[len(images) + 1:])):
                        check_write_target(info)
                    return d, real
        where = "" if stat.S_ISBLK(st.st_mode) else f" (under its {IMAGES}/ directory)"
        raise Forbidden(f"Invalid ticket: {path} is not inside a registered storage "
                        f"domain{where}")


    def _volume_at(self, d: Domain, rel: str) -> VolumeInfo | None:
        """The volume whose data is ``images/<rel>`` of file domain ``d``, if any."""
        parts = rel.split(os.sep)
        if len(parts) != 2 or not os.path.exists(
                os.path.join(d.path, IMAGES, rel + META_SUFFIX)):
            return None
        try:
            return self.storage(d.uuid).lookup(*parts)
        except (InvalidRequest, NotFound):
            return None  # not UUIDs, or deleted meanwhile: not a volume


def _is_metadata(path: str) -> bool:
    """A volume's metadata file, or a file being written in its place: a
    ticket to one would let a transfer rewrite what the domain believes."""
    name = os.path.basename(path)
    return name.endswith(META_SUFFIX) or name.startswith(TMP_PREFIX)


def load_or_create_default(data_dir: str) -> Domain:
    """The embedded default: one file domain under ``<data_dir>/domains``.

    Its UUID is kept in its ``domain.json`` so it survives restarts.
    """
    root = os.path.join(os.path.abspath(data_dir), "domains")
    makedirs_durable(root)
    found = sorted(
        e.name for e in os.scandir(root)
        if e.is_dir() and os.path.exists(os.path.join(e.path, DOMAIN_FILE))
    )
    if found:
        path = os.path.join(root, found[0])
        sd_uuid = open_file_domain(path).uuid
    else:
        sd_uuid = str(uuidlib.uuid4())
        path = os.path.join(root, sd_uuid)
        makedirs_durable(path)
        create_file_domain(path, sd_uuid)
    return Domain(sd_uuid, "file", path)
