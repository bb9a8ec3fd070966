"""Format-changing copies (qcow2 to raw and back) through ``qemu-img``.

Both volumes are local.  ``qemu-img convert -n`` writes into the existing
destination (the domain created it with the right format and size); a
block-domain volume is addressed as a raw region of its device.  The
result is verified with ``qemu-img compare``, which compares what a guest
would see, since the two files' bytes legitimately differ.  A qcow2
volume's header is the uploader's: it is checked first, and qemu-img is
told the volume has no backing file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re

from volume import qcow2
from volume.errors import ChecksumMismatch, InvalidRequest, VolumeError
from volume.sd import VolumeInfo

from .io import IO
from .jobs import Job

log = logging.getLogger(__name__)

_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def target(info: VolumeInfo) -> str:
    """A qemu-img filename for the volume's bytes (a region for block volumes).

    A qcow2 volume is opened with no backing file, whatever its header says
    (:mod:`volume.qcow2`; only a volume without a parent is converted)."""
    if str(info.format) == "qcow2":
        return "json:" + json.dumps({"driver": "qcow2", "backing": None,
                                     "file": {"driver": "file", "filename": info.path}})
    if info.length is None and info.offset == 0:
        return info.path
    spec = {"driver": "raw", "offset": info.offset, "size": info.length,
            "file": {"driver": "host_device", "filename": info.path}}
    return "json:" + json.dumps(spec)


async def _run(*argv: str) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await proc.communicate()
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode not in (0, 1):
        log.error("%s failed: %s", argv[:2], err.decode(errors="replace").strip())
    return proc.returncode or 0, out + err


def check(src: VolumeInfo, dst: VolumeInfo) -> None:
    """Refuse what qemu-img must not open: a volume of a chain (its parent
    would be left out), a qcow2 header naming another file (blocking)."""
    for role, info in (("source", src), ("destination", dst)):
        if info.parent is not None:
            raise InvalidRequest(f"the {role} volume has a parent: a snapshot chain keeps its "
                                 "format (copy it as it is)")
        if str(info.format) == "qcow2":
            qcow2.check(info.path, None)


async def convert(job: Job, io: IO, src: VolumeInfo, dst: VolumeInfo) -> None:
    await io.run(check, src, dst)
    job.bytes_total = src.size
    argv = ["qemu-img", "convert", "-p", "-n", "-f", str(src.format), "-O", str(dst.format),
            target(src), target(dst)]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
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
                         target(src), target(dst))
    if rc == 1:
        raise ChecksumMismatch(f"the converted image differs: {out.decode().strip()}")
    if rc != 0:
        raise VolumeError("qemu-img compare failed, check logs")
    job.result = {"verified_with": "qemu-img compare"}
