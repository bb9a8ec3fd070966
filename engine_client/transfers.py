"""``disk upload`` and ``disk download``: a local file to or from a volume.

The engine creates the volume (upload), opens a ticket on a host serving
the domain, and moves the bytes with ``imagetransfer`` (sparse, resumed by
range after a broken connection, verified by checksum at the end); the
ticket is deleted whatever happens.  An upload's volume is marked
incomplete (``legal: false``) until its bytes are verified.  A qcow2
file is uploaded as it is into a qcow2 volume of its virtual size; a
download writes the volume's bytes (a qcow2 volume gives a qcow2 file).
``--disk`` makes an upload resume into the volume an interrupted run
created.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import imageclient, imagetransfer
from .disklist import owners
from .disks import Ctx, DiskError, locate, serving, source_volume
from .errors import EngineError, HostError, InvalidInput
from .hostapi import HostClient
from .hostvol import (
    VolumeRef,
    add_ticket,
    create_volume,
    delete_ticket,
    delete_volume,
    list_volumes,
    set_legal,
    ticket_size,
)

QCOW2_MAGIC = b"QFI\xfb"

#: Other image formats, by the bytes they start with (as qemu-img probes
#: them): uploaded as raw they would become a disk of container bytes.
_FOREIGN = (
    (b"KDMV", "VMDK"),
    (b"# Disk DescriptorFile", "VMDK descriptor"),
    (b"COWD", "VMDK (ESX)"),
    (b"vhdxfile", "VHDX"),
    (b"conectix", "VHD"),
    (b"QED\0", "QED"),
    (b"LUKS\xba\xbe", "LUKS"),
    (b"<<< Oracle VM VirtualBox Disk Image >>>", "VDI"),
    (b"<<< Sun VirtualBox Disk Image >>>", "VDI"),
    (b"<<< innotek VirtualBox Disk Image >>>", "VDI"),
)


@dataclass(frozen=True)
class Opened:
    ref: VolumeRef
    url: str
    host: str
    size: int  # bytes to move: the file's (upload) or the volume's (download)
    format: str


def local_format(path: str) -> tuple[str, int, int]:
    """``(format, virtual size, file size)`` of a local image: qcow2 (2 or
    3), or raw unless it starts as another format does."""
    try:
        with open(path, "rb") as f:
            head = f.read(104)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise InvalidInput(f"cannot read {path}: {e.strerror}") from None
    for magic, name in _FOREIGN:
        if head.startswith(magic):
            raise InvalidInput(f"{path} is a {name} image, not raw or qcow2; convert it "
                               "first (qemu-img convert -O qcow2)")
    if head[:4] != QCOW2_MAGIC:
        return "raw", -(-size // 512) * 512, size
    if len(head) < 32:
        raise InvalidInput(f"{path} is a truncated qcow2 image")
    version, = struct.unpack(">I", head[4:8])
    if version not in (2, 3):
        raise InvalidInput(f"{path} is a qcow image of version {version}, not qcow2; "
                           "convert it first (qemu-img convert -O qcow2)")
    backing_offset, = struct.unpack(">Q", head[8:16])
    if backing_offset:
        raise InvalidInput(f"{path} is a qcow2 image with a backing file; upload a "
                           "self-contained image (qemu-img convert)")
    # Incompatible feature bit 2 (version 3): the data lives in another file.
    if version == 3 and len(head) >= 80 and struct.unpack(">Q", head[72:80])[0] & 4:
        raise InvalidInput(f"{path} is a qcow2 image with an external data file; upload a "
                           "self-contained image (qemu-img convert)")
    virtual, = struct.unpack(">Q", head[24:32])
    return "qcow2", virtual, size


async def open_upload(ctx: Ctx, path: str, sd_uuid: str, disk: str | None) -> Opened:
    fmt, virtual, size = local_format(path)
    if size == 0:
        raise InvalidInput(f"{path} is empty: there is no disk to upload")
    sd = ctx.cache.domain(sd_uuid).uuid
    if fmt == "qcow2" and ctx.cache.domain(sd).type == "block":
        raise InvalidInput(f"{path} is qcow2 and {sd} is a block domain (raw only); "
                           "convert it first")
    if disk:
        # A resume finishes what an interrupted upload made, which no VM has
        # yet (one is attached only once complete): a VM's disk of the same
        # size would be overwritten with the file.
        users = sorted(owners(ctx.cache).get((disk, sd), []))
        if users:
            raise InvalidInput(f"disk {disk} on {sd} is a disk of {', '.join(users)}; "
                               "--disk only finishes an interrupted upload; leave it out "
                               "to upload into a new disk")
    host = serving(ctx.cache, sd)[0]
    c = ctx.clients(host)
    img = disk or str(uuid.uuid4())
    found = await list_volumes(c, sd, img) if disk else []
    if disk and not found:
        raise InvalidInput(f"there is no disk {disk} on {sd} to resume into; leave out "
                           "--disk to upload into a new disk")
    if found:
        v = found[0]
        if len(found) > 1 or (int(v["size"]), v["format"]) != (virtual, fmt):
            raise InvalidInput(f"disk {img} on {sd} does not match {path} (size or format); "
                               "upload into a new disk instead")
        ref = VolumeRef(sd, img, str(v["vol_uuid"]))
        allocation = str(v["allocation"])
        # The ticket first: a host that refuses it (the disk is being
        # copied) must leave the disk as it was, complete or not.
        url = await add_ticket(c, ref, size, ["write"], sparse=allocation == "sparse")
        try:
            await set_legal(c, ref, False)  # incomplete until this upload is verified
        except BaseException:
            with contextlib.suppress(EngineError):
                await asyncio.shield(delete_ticket(c, url))
            raise
        return Opened(ref, url, host.name, size, fmt)
    ref = VolumeRef(sd, img, str(uuid.uuid4()))
    await create_volume(c, ref, virtual, fmt, "sparse", f"upload of {os.path.basename(path)}",
                        legal=False)
    ticket = str(uuid.uuid4())
    try:
        ctx.report({"event": "volume", "action": "created", **ref.to_json()})
        url = await add_ticket(c, ref, size, ["write"], sparse=True, ticket=ticket)
    except BaseException:  # a Ctrl-C too: nothing was written, leave nothing behind
        with contextlib.suppress(EngineError):
            await asyncio.shield(_discard(c, ref, ticket))
        ctx.report({"event": "volume", "action": "removed", **ref.to_json()})
        raise
    return Opened(ref, url, host.name, size, fmt)


#: Tries of _discard: the canceled ticket request may reach the host after
#: its DELETE; it lands within milliseconds if at all.
DISCARD_TRIES = 10


async def _discard(c: HostClient, ref: VolumeRef, ticket: str) -> None:
    """Remove a new volume and the ticket that may have been opened on it
    (the host keeps a volume in use by a ticket)."""
    for attempt in range(DISCARD_TRIES):
        await delete_ticket(c, f"{c.host.url}/images/{ticket}")
        try:
            await delete_volume(c, ref)
            return
        except HostError as e:
            if e.status != 409 or ticket not in e.detail or attempt == DISCARD_TRIES - 1:
                raise
        await asyncio.sleep(0.1)


def check_target(path: str) -> None:
    """InvalidInput unless a download can be written at ``path`` (checked
    before a ticket is opened on a host for it).  A symlink stands for
    the file it names; anything else that is not a regular file (a FIFO,
    a device, ``/dev/stdout``) is refused: a download replaces the file
    once verified, and would put a plain file in its place."""
    if os.path.isdir(path):
        raise InvalidInput(f"{path} is a directory; give the file to download into")
    problem = imagetransfer.target_problem(path)
    if problem is not None:
        raise InvalidInput(f"cannot download into {path}: {problem}")
    where = os.path.dirname(os.path.realpath(path))
    if not os.path.isdir(where):
        raise InvalidInput(f"cannot download into {path}: {where} is not a directory")
    if not os.access(where, os.W_OK | os.X_OK):
        raise InvalidInput(f"cannot download into {path}: {where} is not writable")


async def open_download(ctx: Ctx, disk: str, sd_uuid: str | None) -> Opened:
    sd = ctx.cache.domain(sd_uuid).uuid if sd_uuid else locate(ctx.cache, disk)[0]
    host = serving(ctx.cache, sd)[0]
    c = ctx.clients(host)
    v = await source_volume(c, sd, disk)
    ref = VolumeRef(sd, disk, str(v["vol_uuid"]))
    size = ticket_size(int(v["size"]), str(v["format"]))
    url = await add_ticket(c, ref, size, ["read"])
    return Opened(ref, url, host.name, size, str(v["format"]))


async def close(ctx: Ctx, opened: Opened) -> None:
    with contextlib.suppress(EngineError):
        await delete_ticket(ctx.clients(ctx.cache.host(opened.host)), opened.url)


async def complete(ctx: Ctx, opened: Opened) -> None:
    """Mark an upload's volume complete, once verified and its ticket gone:
    until then ``disk list`` shows it as ``legal: no`` and it cannot be
    copied, so an interrupted upload is never taken for a whole disk."""
    await set_legal(ctx.clients(ctx.cache.host(opened.host)), opened.ref, True)


def run(opened: Opened, path: str, upload: bool, progress: Callable[[int], None],
        cafile: str | None, total: Callable[[int], None] = lambda n: None
        ) -> dict[str, Any]:
    """Move the bytes (blocking); TransferError becomes DiskError.  ``total``
    gets the bytes of data to move, before ``progress`` counts them."""
    try:
        with imageclient.Client(opened.url, cafile=cafile) as client:
            if upload:
                result = imagetransfer.upload(path, client, progress, total)
            else:
                result = imagetransfer.download(client, path, progress, total)
    except imageclient.TransferError as e:
        verb = "upload" if upload else "download"
        raise DiskError(f"the {verb} failed: {e}") from None
    except BrokenPipeError:  # from ``progress``: stdout, not ``path``
        raise
    except OSError as e:
        raise DiskError(f"cannot use {path}: {e.strerror or e}") from None
    return {"disk": opened.ref.img_uuid, "sd": opened.ref.sd_uuid,
            "volume": opened.ref.vol_uuid, "host": opened.host, "format": opened.format,
            "file": path, **result.to_json()}
