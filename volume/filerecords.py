"""A file domain's volumes as their metadata files record them.

Each volume of a file domain is its data, ``images/<img_uuid>/<vol_uuid>``,
and next to it ``<vol_uuid>.meta``: JSON, the volume's record (size,
format, parent, ...) and its state, ``ready`` or ``deleting``.  The layout
and the order of writes are told in :mod:`volume.filedomain`.

:class:`FileRecords` finds, reads, lists and writes these files, each
through no link (:mod:`volume._confined`); a record must name its own
volume.  For a delete, metadata that is not the volume's own (a link
planted in its place, another volume's ids) is not read at all;
:class:`~volume.filedomain.FileDomain` makes, changes and deletes volumes
on top of it.  The names of the layout and :func:`read_json`, which also
reads the domain's marker, are here too.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from . import _confined
from ._oserror import oserrors
from .durable import atomic_write_at
from .errors import Conflict, Forbidden, InvalidRequest, NotFound, VolumeError
from .sd import Allocation, BaseDomain, Content, Format, VolumeInfo
from .validate import check_uuid

log = logging.getLogger(__name__)

DOMAIN_FILE = "domain.json"
IMAGES = "images"
META_SUFFIX = ".meta"
VERSION = 1
READY = "ready"
DELETING = "deleting"
#: Not a state on the storage: the metadata is a link planted in its place,
#: or a file that is not this volume's (corrupt, or another's ids in it).
PLANTED = "planted"
#: Far above what a volume's metadata (its description is bounded) or the
#: domain's marker needs; keeps a planted huge file out of memory.
MAX_METADATA = 64 * 1024


def read_json(root: str, path: str, what: str) -> dict[str, Any]:
    """The JSON object in ``path``, a file below the domain directory ``root``."""
    data = json.loads(_confined.read_file(root, path, what, MAX_METADATA))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


class FileRecords(BaseDomain):
    """The volume records of the file domain at ``root``: what
    :class:`~volume.filedomain.FileDomain` builds on."""

    def __init__(self, root: str, sd_uuid: str) -> None:
        super().__init__(sd_uuid, (root,))
        self._root = root
        self._images = os.path.join(root, IMAGES)

    def _paths(self, img: str, vol: str) -> tuple[str, str]:
        data = os.path.join(self._images, img, vol)
        return data, data + META_SUFFIX

    def _read(self, img: str, vol: str) -> tuple[VolumeInfo, str]:
        """The volume's record and state (ready or deleting), or NotFound."""
        img, vol = check_uuid(img, "image"), check_uuid(vol, "volume")
        data, meta_path = self._paths(img, vol)
        try:
            meta = read_json(self._root, meta_path, "volume metadata")
            info = VolumeInfo.from_meta(self._uuid, meta, path=data, within=self._root)
            state = meta["state"]
            # The ids name the files every later step works on (the delete's
            # mark, its unlinks): another volume's, or "../..", lead elsewhere.
            if (info.img_uuid, info.vol_uuid) != (img, vol):
                raise ValueError(f"it names volume {info.img_uuid}/{info.vol_uuid}")
            # And its parent as check_uuid spells it: the child check compares.
            if info.parent is not None and check_uuid(info.parent, "parent") != info.parent:
                raise ValueError(f"its parent is spelled {info.parent!r}")
        except FileNotFoundError:
            raise self._not_found(img, vol) from None
        except OSError as e:
            raise VolumeError(f"cannot read volume metadata: {e.strerror}") from e
        except (ValueError, KeyError, TypeError) as e:
            log.error("corrupt volume metadata: %s: %s", meta_path, e)
            raise CorruptMetadata(f"corrupt metadata of volume {img}/{vol}") from None
        return info, state

    def _read_to_delete(self, img: str, vol: str) -> tuple[VolumeInfo, str]:
        """As :meth:`_read`, but metadata that cannot be trusted (a link
        planted in its place, a file that is not this volume's) is not
        refused: the record names the volume only, and the delete works on
        those names."""
        img, vol = check_uuid(img, "image"), check_uuid(vol, "volume")
        data, meta_path = self._paths(img, vol)
        try:
            return self._read(img, vol)
        except CorruptMetadata:
            pass
        except Forbidden:
            with oserrors("read volume metadata"):
                if not _confined.planted(self._root, meta_path, "volume metadata"):
                    raise
        # Its metadata is not its own: a plain data volume, as it is no OVF
        # store to the daemon (a store is one it lists).
        return VolumeInfo(self._uuid, img, vol, 0, Format.RAW, Allocation.SPARSE,
                          Content.DATA, None, "", path=data, within=self._root), PLANTED

    def _ready(self, img: str, vol: str) -> VolumeInfo:
        info, state = self._read(img, vol)
        if state != READY:
            raise self._being_deleted(img, vol)
        return info

    def _being_deleted(self, img: str, vol: str) -> NotFound:
        return NotFound(f"Volume {img}/{vol} of storage domain {self._uuid} is "
                        "being deleted")

    def _write_meta(self, info: VolumeInfo, state: str) -> None:
        """Replace the volume's metadata, in its image directory reached
        through no link (a directory swapped for one meanwhile changes
        nothing)."""
        meta = {"version": VERSION, "state": state, **info.meta()}
        _, meta_path = self._paths(info.img_uuid, info.vol_uuid)
        directory = _confined.open_dir(self._root, os.path.dirname(meta_path),
                                       "image directory")
        try:
            atomic_write_at(directory, os.path.basename(meta_path),
                            json.dumps(meta, sort_keys=True).encode())
        finally:
            os.close(directory)

    def list_volumes(self, img_uuid: str | None = None) -> list[VolumeInfo]:
        with oserrors("list volumes"):
            if img_uuid is not None:
                return self._list(check_uuid(img_uuid, "image"))
            found: list[VolumeInfo] = []
            for img in sorted(os.listdir(self._images)):
                if os.path.isdir(os.path.join(self._images, img)):
                    found += self._list(img)
            return found

    def _list(self, img: str, strict: bool = False, but: str = "") -> list[VolumeInfo]:
        """The ready volumes of image ``img`` (all but ``but``).  One that
        cannot be read is skipped, or with ``strict`` refused (Conflict): it
        may be anyone's child, its metadata given a second link by a backup,
        say.  A name that is no UUID, and a symbolic link or a directory in
        place of metadata, are no volume's record, and are skipped either
        way."""
        try:
            names = sorted(os.listdir(os.path.join(self._images, img)))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            vol = name.removesuffix(META_SUFFIX)
            if vol in (name, but):
                continue
            try:
                info, state = self._read(img, vol)
            except NotFound:
                continue  # deleted meanwhile
            except InvalidRequest as e:  # a name that is no volume's
                log.warning("skipping %s in image %s: %s", name, img, e)
                continue
            except (Forbidden, VolumeError) as e:
                if strict and _confined.is_file(
                        self._root, os.path.join(self._images, img, name), "volume metadata"):
                    raise Conflict(f"volume {img}/{vol} cannot be read ({e}), and it may "
                                   "be a child") from None
                log.warning("skipping volume %s/%s: %s", img, vol, e)
                continue
            if state == READY:
                found.append(info)
        return found


class CorruptMetadata(VolumeError):
    """A volume's metadata is not a record of it (bad JSON, missing fields,
    another volume's ids)."""
