"""Format-changing copies (qcow2 to raw and back) through ``qemu-img``.

Both volumes are local.  ``qemu-img convert -n`` writes into the existing
destination (the domain created it with the right format and size); a
block-domain volume is addressed as a raw region of its device.  The
result is verified with ``qemu-img compare``, which compares what a guest
would see, since the two files' bytes legitimately differ.  qemu-img is
given the files the daemon opened inside their domains (``/proc/self/fd``),
never a name that could lead elsewhere by then; a qcow2 volume's header is
the uploader's: it is checked first, and qemu-img is told the volume has
no backing file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re

from volume import filedata, qcow2
from volume.errors import ChecksumMismatch, InvalidRequest, VolumeError
from volume.qemuimg import image_spec
from volume.sd import VolumeInfo

from .io import IO
from .jobs import Job

log = logging.getLogger(__name__)

_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def target(info: VolumeInfo, fd: int | None) -> str:
    """A qemu-img filename for the volume's bytes: the file open as ``fd``
    (inherited by qemu-img) for a file-domain volume, else the region of
    its registered device.  A qcow2 volume is opened with no backing file,
    whatever its header says (only a volume without a parent is converted)."""
    if fd is not None:
        return image_spec(str(info.format), fd)
    spec = {"driver": "raw", "offset": info.offset, "size": info.length,
            "file": {"driver": "host_device", "filename": info.path}}
    return "json:" + json.dumps(spec)


async def _run(*argv: str, fds: tuple[int, ...]) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, pass_fds=fds)
    try:
        out, err = await proc.communicate()
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode not in (0, 1):
        log.error("%s failed: %s", argv[:2], err.decode(errors="replace").strip())
    return proc.returncode or 0, out + err


def open_checked(src: VolumeInfo, dst: VolumeInfo) -> list[int | None]:
    """The descriptors qemu-img is given, opened inside their domains (None
    for a block volume, addressed by its registered device), after refusing
    what it must not open: a volume of a chain (its parent would be left
    out), a qcow2 header naming another file.  Blocking."""
    fds: list[int | None] = []
    try:
        for role, info, flags in (("source", src, os.O_RDONLY), ("destination", dst, os.O_RDWR)):
            if info.parent is not None:
                raise InvalidRequest(f"the {role} volume has a parent: a snapshot chain keeps "
                                     "its format (copy it as it is)")
            if info.length is not None:
                fds.append(None)
                continue
            fds.append(fd := filedata.open_fd(info, flags | os.O_CLOEXEC))
            if str(info.format) == "qcow2":
                qcow2.check_fd(fd, info.vol_uuid, None)
    except BaseException:
        _close(fds)
        raise
    return fds


def _close(fds: list[int | None]) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)


async def convert(job: Job, io: IO, src: VolumeInfo, dst: VolumeInfo) -> None:
    opened = await io.run(open_checked, src, dst)
    try:
        await _convert(job, src, dst, opened)
    finally:
        await io.run(_close, opened)


async def _convert(job: Job, src: VolumeInfo, dst: VolumeInfo,
                   opened: list[int | None]) -> None:
    job.bytes_total = src.size
    names = [target(info, fd) for info, fd in zip((src, dst), opened, strict=True)]
    fds = tuple(fd for fd in opened if fd is not None)
    argv = ["qemu-img", "convert", "-p", "-n", "-f", str(src.format), "-O", str(dst.format),
            *names]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, pass_fds=fds)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        while chunk := await proc.stdout.read(4096):
            for m in _PROGRESS.finditer(chunk):
                job.bytes_done = int(src.size * float(m.group(1)) / 100)
        err = await proc.stderr.read()
        await proc.wait()
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        log.error("qemu-img convert failed: %s", err.decode(errors="replace").strip())
        raise VolumeError("qemu-img convert failed, check logs")
    job.bytes_done = src.size
    job.state = "verifying"
    rc, out = await _run("qemu-img", "compare", "-f", str(src.format), "-F", str(dst.format),
                         *names, fds=fds)
    if rc == 1:
        raise ChecksumMismatch(f"the converted image differs: {out.decode().strip()}")
    if rc != 0:
        raise VolumeError("qemu-img compare failed, check logs")
    job.result = {"verified_with": "qemu-img compare"}
