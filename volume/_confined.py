"""Opening a file domain's files without following anything out of the domain.

A file domain is a directory that others can write: an NFS export shared by
every host of the pool, and its storage admins.  A symlink or a hard link
planted there must not turn a volume into a host file or a host device, so a
path below the domain's directory is never opened by name:

- every component below the directory is opened ``O_PATH | O_NOFOLLOW``
  from its parent's descriptor, and a symlink, or anything but a directory
  on the way, is refused;
- the last one must be a regular file with one link (a hard link to a file
  elsewhere on the same filesystem is invisible to ``realpath``; nothing
  here makes hard links, see :mod:`volume.durable`);
- only then is that same inode opened for I/O, through
  ``/proc/self/fd/N``, which does not look the name up again; so nothing
  that changes between a ticket's check and its first request counts;
- last, the opened descriptor must still be that inode, and its location
  (``readlink`` of ``/proc/self/fd/N``) inside the directory, which catches
  the directory itself being swapped meanwhile.

A name is removed the same way (:func:`remove`): unlinked from its
directory's descriptor, so a link planted there goes and what it leads to
stays; that is how a volume whose file was replaced by a link is deleted.

The directory itself is trusted: it comes from the engine or the config.
Refusals raise :class:`~volume.errors.Forbidden`; failing system calls raise
``OSError`` for the caller's :func:`~volume._oserror.oserrors`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

from .durable import fsync_dir_at
from .errors import Forbidden, Unsupported

#: Looking a component up, never opening it for I/O: a device or FIFO named
#: so is not opened at all, and a symlink gives a descriptor of the link.
_LOOKUP = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC

_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"),
          (stat.S_ISREG, "a regular file"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def _below(within: str, path: str, what: str) -> tuple[str, list[str]]:
    """The real path of ``within`` and the components of ``path`` below it."""
    root = os.path.realpath(within)
    names = path[len(root) + 1:].split(os.sep) if path.startswith(root + os.sep) else []
    if not names or any(name in ("", ".", "..") for name in names):
        raise Forbidden(f"{what} {os.path.basename(path)} is not inside its storage "
                        "domain's directory: refused")
    return root, names


def _lookup(root: str, names: list[str], what: str) -> tuple[int, os.stat_result]:
    """An ``O_PATH`` descriptor of the last of ``names`` below ``root``, and its stat."""
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, name in enumerate(names):
            parent, fd = fd, -1
            try:
                fd = os.open(name, _LOOKUP, dir_fd=parent)
            finally:
                os.close(parent)
            st = os.fstat(fd)
            if i < len(names) - 1 and not stat.S_ISDIR(st.st_mode):
                raise Forbidden(f"{what} {'/'.join(names)} of a file storage domain is "
                                f"under {'/'.join(names[:i + 1])}, which is "
                                f"{_kind(st.st_mode)}, not a directory: refused, so that "
                                "it cannot lead out of the domain")
        return fd, st
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise


def _check_file(st: os.stat_result, names: list[str], what: str) -> None:
    rel = "/".join(names)
    if not stat.S_ISREG(st.st_mode):
        raise Forbidden(f"{what} {rel} of a file storage domain is {_kind(st.st_mode)}, "
                        "not a regular file: refused, so that it cannot lead out of the "
                        "domain")
    if st.st_nlink != 1:
        raise Forbidden(f"{what} {rel} of a file storage domain has {st.st_nlink} hard "
                        "links, and may have only one: refused")


def check_file(within: str, path: str, what: str) -> os.stat_result:
    """Refuse ``path`` unless it is a regular file with one link, reached
    from the directory ``within`` through no symlink; return its stat.

    ``what`` names it in messages ("volume", "volume metadata").  Blocking.
    """
    root, names = _below(within, path, what)
    fd, st = _lookup(root, names, what)
    os.close(fd)
    _check_file(st, names, what)
    return st


def _planted(st: os.stat_result) -> str | None:
    """What stands at a name in place of a regular file with one link, and
    goes with the name: a symbolic link, a hard link, a device node, a FIFO
    or a socket.  None for such a file, and for a directory."""
    if stat.S_ISDIR(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink == 1):
        return None
    if stat.S_ISREG(st.st_mode):
        return f"a hard link (one of {st.st_nlink} names of a file)"
    return _kind(st.st_mode)


def _stat(within: str, path: str, what: str) -> os.stat_result | None:
    """The status of the name ``path`` itself (a link is not followed),
    reached from ``within`` through no link; None if nothing is there."""
    root, names = _below(within, path, what)
    try:
        fd, st = _lookup(root, names, what)
    except FileNotFoundError:
        return None
    os.close(fd)
    return st


def planted(within: str, path: str, what: str) -> str | None:
    """What :func:`check_file` would refuse at ``path`` that :func:`remove`
    can take away ("a symbolic link", "a hard link (...)"), or None: a
    regular file with one link, a directory, or nothing at all.  A component
    on the way that is no directory is refused, as everywhere.  Blocking."""
    st = _stat(within, path, what)
    return None if st is None else _planted(st)


def is_file(within: str, path: str, what: str) -> bool:
    """Whether the name ``path`` (not followed) is a file: neither missing,
    nor a symbolic link, nor a directory.  Reached from ``within`` through
    no link.  Blocking."""
    st = _stat(within, path, what)
    return st is not None and not stat.S_ISLNK(st.st_mode) and not stat.S_ISDIR(st.st_mode)


def _dir(root: str, names: list[str], what: str) -> int:
    """An ``O_PATH`` descriptor of the directory ``names`` below ``root``
    (``root`` itself for no names)."""
    if not names:
        return os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    fd, st = _lookup(root, names, what)
    if not stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise Forbidden(f"{what} {'/'.join(names)} of a file storage domain is "
                        f"{_kind(st.st_mode)}, not a directory: refused, so that it cannot "
                        "lead out of the domain")
    return fd


def open_dir(within: str, path: str, what: str) -> int:
    """An ``O_PATH`` descriptor of the directory ``path``, reached from
    ``within`` through no symlink: create files in it with ``dir_fd`` and
    ``O_NOFOLLOW``, and a swap of the directory afterwards changes nothing.
    Blocking."""
    root, names = _below(within, path, what)
    return _dir(root, names, what)


def remove(within: str, path: str, what: str) -> str | None:
    """Remove the name ``path`` (a file, or an empty directory) from its
    directory, reached from ``within`` through no symlink, then fsync that
    directory, as :func:`volume.durable.remove_durable` does.

    The name is unlinked relative to the directory's descriptor, never
    opened nor followed: a link planted there goes, and what it leads to (a
    host file, the other names of a hard link) is left as it was.  A name
    already gone is fine.  Returns what was planted there, if anything (as
    :func:`planted` says it, a symbolic link with its target), for the
    caller's log.  Blocking.
    """
    root, names = _below(within, path, what)
    found = _dir(root, names[:-1], f"directory of the {what}")
    try:
        return remove_at(found, names[-1])
    finally:
        os.close(found)


def remove_at(dir_fd: int, name: str) -> str | None:
    """:func:`remove` of ``name`` in the directory ``dir_fd`` (an ``O_PATH``
    descriptor will do), which the caller reached through no link."""
    was = None
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        was = _planted(st)
        if stat.S_ISLNK(st.st_mode):
            was = f"{was} to {os.readlink(name, dir_fd=dir_fd)!r}"
        if stat.S_ISDIR(st.st_mode):
            os.rmdir(name, dir_fd=dir_fd)
        else:
            os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    fsync_dir_at(dir_fd)
    return was


def open_file(within: str, path: str, what: str,
              opener: Callable[[str], int]) -> int:
    """Open ``path`` as :func:`check_file` checks it, race-free.

    ``opener`` opens the path it is given with the caller's flags (and its
    own fallbacks, such as buffered I/O where ``O_DIRECT`` is refused); it is
    given ``/proc/self/fd/N`` of the checked inode, never ``path``.  Returns
    the new descriptor.  Blocking.
    """
    root, names = _below(within, path, what)
    found, st = _lookup(root, names, what)
    try:
        _check_file(st, names, what)
        fd = opener(f"/proc/self/fd/{found}")
    finally:
        os.close(found)
    try:
        opened = os.fstat(fd)
        where = os.readlink(f"/proc/self/fd/{fd}")
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino) \
                or not where.startswith(root + os.sep):
            raise Forbidden(f"{what} {'/'.join(names)} of a file storage domain was moved "
                            "out of the domain while it was being opened: refused")
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_file(within: str, path: str, what: str, limit: int) -> bytes:
    """The content of the small file ``path`` (at most ``limit`` bytes), as
    :func:`open_file` opens it; ValueError if it is larger.  Blocking."""
    fd = open_file(within, path, what,
                   lambda p: os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK))
    try:
        data = b""
        while len(data) <= limit and (part := os.read(fd, limit + 1 - len(data))):
            data += part
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return data


def check_proc() -> None:
    """Raise :class:`~volume.errors.Unsupported` unless ``/proc/self/fd``
    leads to the process's descriptors: every confined open and check goes
    through it, and without it each volume would fail on its own, with an
    error that names a path under ``/proc``."""
    fd = os.open("/", os.O_PATH | os.O_CLOEXEC)
    try:
        found = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        found = None
    finally:
        os.close(fd)
    if found != "/":
        raise Unsupported("/proc is not mounted: volumes are opened through /proc/self/fd, "
                          "so that a link planted in a domain leads nowhere")
