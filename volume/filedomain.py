"""File storage domains: a directory (local disk or NFS) of volume files.

Layout under the domain's root::

    domain.json                      {"uuid", "type": "file", "version"}
    images/<img_uuid>/<vol_uuid>     the data: raw or qcow2
    images/<img_uuid>/<vol_uuid>.meta  JSON: size, format, parent, ...

Everything below the root is read and opened through no symlink, as a
regular file with one link (:mod:`volume._confined`): others may write the
directory (an NFS export), and must not lead a volume out of it.

The ``.meta`` file is the commit point, always replaced atomically
(:func:`volume.durable.atomic_write`):

- create writes and fsyncs the data first and the metadata last, so a
  crash leaves at most a data file without metadata, which no lookup
  serves and the next create of that UUID removes;
- delete first marks the metadata ``deleting`` (from then on the volume
  is gone for lookups and lists), then removes the data, then the
  metadata; a crash in between is finished by deleting again;
- a link planted in place of the data or the metadata does not stop a
  delete: the name is unlinked, never followed, and the link's target is
  left alone (:func:`volume._confined.remove`); metadata that is a link is
  never read, and needs no mark: such a volume is gone for lookups already;
- resize grows the data first and records the new size last, so the
  metadata never claims bytes the data lacks.

The metadata files are found, read, listed and written by
:mod:`volume.filerecords`; this module makes domains, and makes, changes
and deletes their volumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import stat

from . import _confined, filedata
from ._oserror import oserrors
from .durable import TMP_PREFIX, atomic_write, makedirs_durable
from .errors import Conflict, Forbidden, InvalidRequest, VolumeError
from .filerecords import (
    DELETING,
    DOMAIN_FILE,
    IMAGES,
    PLANTED,
    READY,
    VERSION,
    FileRecords,
    read_json,
)
from .sd import Format, Space, VolumeInfo
from .storeguard import check_deletable, check_resizable
from .validate import check_directory, check_size, check_uuid

log = logging.getLogger(__name__)


def create_file_domain(path: str, sd_uuid: str) -> FileDomain:
    """Make the existing directory ``path`` a new, empty file domain."""
    sd_uuid = check_uuid(sd_uuid, "storage domain")
    root = check_directory(path)
    marker = os.path.join(root, DOMAIN_FILE)
    if os.path.exists(marker):
        raise Conflict(f"{path} already holds a storage domain")
    # As vdsm: a domain is made in an empty export (a new filesystem's
    # lost+found aside), never over someone's files.
    with oserrors("read the directory"):
        found = sorted(set(os.listdir(root)) - {"lost+found"})
        # What a create that failed or crashed before its marker left: its
        # empty images directory, the marker's temporary file.
        images = os.path.join(root, IMAGES)
        found = [name for name in found if not (
            (name == IMAGES and _empty_dir(images))
            or (name.startswith(TMP_PREFIX) and name.endswith(".part")))]
    if found:
        raise Conflict(f"{path} is not empty (it holds {found[0]!r}"
                       f"{f' and {len(found) - 1} more' if len(found) > 1 else ''}); "
                       "a new file domain needs an empty directory")
    with oserrors("create storage domain"):
        makedirs_durable(images)
        meta = {"uuid": sd_uuid, "type": "file", "version": VERSION}
        try:
            atomic_write(marker, json.dumps(meta).encode())
        except BaseException:
            with contextlib.suppress(OSError):  # empty again: a retry may go on
                os.rmdir(images)
            raise
    log.info("created file domain sd=%s root=%s", sd_uuid, root)
    return FileDomain(root, sd_uuid)


def _empty_dir(path: str) -> bool:
    """A directory (not a link to one) with nothing in it."""
    st = os.lstat(path)
    return stat.S_ISDIR(st.st_mode) and not os.listdir(path)


def open_file_domain(path: str, sd_uuid: str | None = None) -> FileDomain:
    """Attach to the file domain at ``path``; if ``sd_uuid`` is given, it
    must be the UUID recorded there."""
    if sd_uuid is not None:
        sd_uuid = check_uuid(sd_uuid, "storage domain")
    root = check_directory(path)
    try:
        meta = read_json(root, os.path.join(root, DOMAIN_FILE), "domain marker")
    except FileNotFoundError:
        raise InvalidRequest(f"{path} is not a storage domain (no {DOMAIN_FILE})") from None
    except (OSError, ValueError, Forbidden) as e:
        raise InvalidRequest(f"{path}: unreadable {DOMAIN_FILE}: {e}") from None
    found = meta.get("uuid")
    if meta.get("type") != "file" or not isinstance(found, str):
        raise InvalidRequest(f"{path}: {DOMAIN_FILE} does not describe a file domain")
    if sd_uuid is not None and found != sd_uuid:
        raise InvalidRequest(f"{path} holds storage domain {found}, not {sd_uuid}")
    return FileDomain(root, found)


class FileDomain(FileRecords):
    """A file domain; build it with :func:`create_file_domain` or
    :func:`open_file_domain`."""

    type = "file"

    def _create(self, info: VolumeInfo) -> VolumeInfo:
        data, meta_path = self._paths(info.img_uuid, info.vol_uuid)
        info = dataclasses.replace(info, path=data, within=self._root)
        with self._lock, oserrors("create volume"):
            backing = self._check_parent(info)
            if os.path.exists(meta_path):
                existing, state = self._read(info.img_uuid, info.vol_uuid)
                if state == READY:
                    raise Conflict(f"Volume {info.img_uuid}/{info.vol_uuid} already exists")
                self._purge(existing)
            makedirs_durable(os.path.dirname(data))
            # The data is made in this directory, reached through no symlink,
            # with O_EXCL|O_NOFOLLOW: a link planted at its name (or in place
            # of the directory) after the check leads nowhere.
            image_dir = _confined.open_dir(self._root, os.path.dirname(data),
                                           "image directory")
            try:
                # Removed in that directory too, never by a path that a
                # directory swapped for a link meanwhile would lead out.
                name = os.path.basename(data)
                with contextlib.suppress(FileNotFoundError):
                    os.stat(name, dir_fd=image_dir, follow_symlinks=False)
                    log.warning("removing data left by a crashed create: %s", data)
                    _confined.remove_at(image_dir, name)
                try:
                    filedata.make(info, backing, image_dir)
                    self._write_meta(info, READY)
                except BaseException:
                    # Not left for the next create of this UUID: the engine may
                    # never make one, and the data may hold the space that a
                    # failed metadata write lacked.
                    with contextlib.suppress(OSError):
                        _confined.remove_at(image_dir, name)
                    raise
            finally:
                os.close(image_dir)
        log.info("created volume sd=%s img=%s vol=%s size=%d format=%s allocation=%s",
                 self._uuid, info.img_uuid, info.vol_uuid, info.size, info.format,
                 info.allocation)
        return info

    def _check_parent(self, info: VolumeInfo) -> VolumeInfo | None:
        if info.parent is None:
            return None
        if info.format != Format.QCOW2:
            raise InvalidRequest("a volume with a parent must be qcow2")
        parent = self._ready(info.img_uuid, info.parent)
        if info.size < parent.size:
            raise InvalidRequest(f"volume size {info.size} is smaller than its parent's "
                                 f"{parent.size}")
        return parent

    def resize_volume(self, img_uuid: str, vol_uuid: str, size: int) -> VolumeInfo:
        size = check_size(size)
        with self._lock, oserrors("resize volume"):
            info = self._ready(img_uuid, vol_uuid)
            check_resizable(info)
            if size < info.size:
                raise InvalidRequest(f"volume size {info.size} cannot shrink to {size}")
            if size == info.size:
                return info
            filedata.grow(info, size)
            info = dataclasses.replace(info, size=size)
            self._write_meta(info, READY)
        log.info("resized volume sd=%s img=%s vol=%s size=%d", self._uuid, info.img_uuid,
                 info.vol_uuid, size)
        return info

    def set_legal(self, img_uuid: str, vol_uuid: str, legal: bool) -> VolumeInfo:
        with self._lock, oserrors("update volume metadata"):
            info = dataclasses.replace(self._ready(img_uuid, vol_uuid), legal=legal)
            self._write_meta(info, READY)
        log.info("volume sd=%s img=%s vol=%s legal=%s", self._uuid, img_uuid, vol_uuid, legal)
        return info

    def delete_volume(self, img_uuid: str, vol_uuid: str) -> None:
        with self._lock, oserrors("delete volume"):
            info, state = self._read_to_delete(img_uuid, vol_uuid)
            # One being deleted (a crash) is finished, whatever it is.
            if state in (READY, PLANTED):
                check_deletable(info)
                # Strict: a volume that cannot be read may be a child.
                children = [v.vol_uuid for v in self._list(info.img_uuid, strict=True,
                                                           but=info.vol_uuid)
                            if v.parent == info.vol_uuid]
                if children:
                    raise Conflict(f"Volume {info.img_uuid}/{info.vol_uuid} is the parent "
                                   f"of {', '.join(children)}")
            if state == READY:
                try:
                    self._write_meta(info, DELETING)
                except OSError as e:
                    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    # The mark is a new file and the domain is full: free the
                    # data first.  A crash before the mark leaves metadata
                    # without data, which lookup refuses and deleting again
                    # finishes.
                    log.warning("domain full, removing the data of %s/%s before marking "
                                "it deleted", info.img_uuid, info.vol_uuid)
                    self._remove(info.path, "volume")
                    self._write_meta(info, DELETING)
            self._purge(info)
        log.info("deleted volume sd=%s img=%s vol=%s", self._uuid, info.img_uuid,
                 info.vol_uuid)

    def _purge(self, info: VolumeInfo) -> None:
        """Remove data, then metadata, then the image directory if empty."""
        data, meta_path = self._paths(info.img_uuid, info.vol_uuid)
        self._remove(data, "volume")
        self._remove(meta_path, "volume metadata")
        try:
            self._remove(os.path.dirname(data), "image directory")
        except OSError as e:
            if e.errno != errno.ENOTEMPTY:
                raise

    def _remove(self, path: str, what: str) -> None:
        """Remove the name ``path``, never what a link planted there leads to."""
        planted = _confined.remove(self._root, path, what)
        if planted is not None:
            log.warning("removed %s planted in place of %s %s of storage domain %s; "
                        "what it led to is left as it was", planted, what,
                        os.path.relpath(path, self._root), self._uuid)

    def lookup(self, img_uuid: str, vol_uuid: str) -> VolumeInfo:
        return self._check_data(self._ready(img_uuid, vol_uuid))

    def lookup_to_delete(self, img_uuid: str, vol_uuid: str) -> VolumeInfo:
        """The volume that :meth:`delete_volume` would delete, for the checks
        before it (is it in use?): as :meth:`lookup`, but a link planted in
        place of its data or its metadata does not refuse it, since the
        delete removes the link and never follows it."""
        info, state = self._read_to_delete(img_uuid, vol_uuid)
        if state == PLANTED:
            return info  # gone for lookups: what is left of it goes, whatever it is
        if state != READY:
            raise self._being_deleted(info.img_uuid, info.vol_uuid)
        return self._check_data(info, planted_ok=True)

    def _check_data(self, info: VolumeInfo, planted_ok: bool = False) -> VolumeInfo:
        """``info``, unless its data is missing or (but for a link planted
        there, with ``planted_ok``) refused by :func:`volume._confined.check_file`."""
        try:
            # Only a first, early refusal: the data is opened checked again.
            if not (planted_ok and _confined.planted(self._root, info.path, "volume")):
                _confined.check_file(self._root, info.path, "volume")
        except (FileNotFoundError, NotADirectoryError):
            log.error("volume metadata without data: %s", info.path)
            raise VolumeError(f"data of volume {info.img_uuid}/{info.vol_uuid} "
                              "is missing") from None
        except Forbidden as e:
            log.error("refusing volume sd=%s img=%s vol=%s: %s", self._uuid,
                      info.img_uuid, info.vol_uuid, e)
            raise
        except OSError as e:
            raise VolumeError(f"cannot check the data of volume {info.img_uuid}/"
                              f"{info.vol_uuid}: {e.strerror}") from e
        return info

    def space(self) -> Space:
        with oserrors("statvfs"):
            st = os.statvfs(self._root)
        return Space(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)

    def check(self) -> None:
        try:
            meta = read_json(self._root, os.path.join(self._root, DOMAIN_FILE),
                              "domain marker")
            os.listdir(self._images)
        except (OSError, ValueError, Forbidden) as e:
            log.warning("domain check failed sd=%s: %s", self._uuid, e)
            raise VolumeError(f"storage domain {self._uuid} is unreachable") from e
        if meta.get("uuid") != self._uuid:
            raise VolumeError(f"storage domain {self._uuid} was replaced by "
                              f"{meta.get('uuid')}")
