"""Running ``qemu-img``: create, resize and inspect qcow2 images.

Always with an argv list (never a shell) and always with an explicit
``-f``: probing the format of a guest-written image is how a raw image
that looks like qcow2 gets its backing file followed (CVE-2008-2004).
"""

from __future__ import annotations

import json
import logging
import subprocess
from typing import Any

from .errors import InvalidRequest, NoSpace, VolumeError

log = logging.getLogger(__name__)

QEMU_IMG = "qemu-img"
#: qemu-img's words for a size beyond what qcow2 describes (create, resize),
#: or so near 2**63 that its rounding overflows.
_TOO_LARGE = ("too large", "size cannot be negative", "exceeds maximum")


def _run(argv: list[str], action: str, pass_fds: tuple[int, ...] = ()) -> str:
    log.debug("running %s", argv)
    try:
        p = subprocess.run(argv, capture_output=True, text=True, check=False,
                           pass_fds=pass_fds)
    except OSError as e:
        raise VolumeError(f"{action}: cannot run {QEMU_IMG}: {e.strerror}") from e
    if p.returncode != 0:
        # stderr names paths: log it, keep it out of the client's error.
        log.error("%s failed rc=%d argv=%s stderr=%s", QEMU_IMG, p.returncode, argv,
                  p.stderr.strip())
        if "No space left" in p.stderr or "Disk quota exceeded" in p.stderr:
            raise NoSpace(f"{action}: no space left on the storage domain")
        if any(words in p.stderr for words in _TOO_LARGE):
            raise InvalidRequest(f"{action}: the size is larger than qcow2 or the storage "
                                 "allows")
        raise VolumeError(f"{action}: {QEMU_IMG} failed (exit code {p.returncode})")
    return p.stdout


def create(fd: int, size: int, *, preallocation: str | None = None,
           backing: str | None = None, backing_format: str | None = None) -> None:
    """Format the new, empty file open as ``fd`` as a qcow2 image of
    ``size`` bytes (qemu-img gets that very file, ``/proc/self/fd``).

    ``preallocation`` is a qcow2 ``preallocation=`` value (``falloc``...);
    ``backing`` is the parent image, relative to the image's directory, of
    format ``backing_format``.  The parent is not opened (``-u``): its
    header is an uploader's, and could name any file, device or server.
    """
    argv = [QEMU_IMG, "create", "-q", "-f", "qcow2"]
    options = ["compat=1.1"]
    if preallocation:
        options.append(f"preallocation={preallocation}")
    argv += ["-o", ",".join(options)]
    if backing:
        argv += ["-u", "-b", backing, "-F", backing_format or "raw"]
    _run([*argv, f"/proc/self/fd/{fd}", str(size)], "create qcow2 volume", (fd,))


def resize(fd: int, size: int, *, preallocation: str | None = None) -> None:
    """Grow the qcow2 image open as ``fd`` to ``size`` bytes.  qemu-img gets
    that very file (``/proc/self/fd``), not a name that could lead elsewhere
    by then, and opens no backing file, whatever the header names (growing
    does not need it); check the header first (:func:`volume.qcow2.check_fd`)."""
    argv = [QEMU_IMG, "resize", "-q", "-f", "qcow2"]
    if preallocation:
        argv.append(f"--preallocation={preallocation}")
    _run([*argv, image_spec("qcow2", fd), str(size)], "resize qcow2 volume", (fd,))


def image_spec(fmt: str, fd: int) -> str:
    """A qemu filename for the image open as ``fd`` (inherited by qemu-img):
    no backing file is opened for a qcow2 one."""
    spec: dict[str, Any] = {"driver": fmt, "file": {"driver": "file",
                                                    "filename": f"/proc/self/fd/{fd}"}}
    if fmt == "qcow2":
        spec["backing"] = None
    return "json:" + json.dumps(spec)


def info(path: str, fmt: str) -> dict[str, Any]:
    """``qemu-img info --output=json`` of the image at ``path``."""
    out = _run([QEMU_IMG, "info", "--output=json", "-f", fmt, path], "inspect volume")
    result: dict[str, Any] = json.loads(out)
    return result
