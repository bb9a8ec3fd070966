"""The copy bench's images and rows: what each round moves, timed and checked.

Images live on a source host, in its storage domain (on the disk under
test, or on /dev/shm for the `copy-shm` rows):
- `dense`: the workspace's random image (a copy of its on-disk copy, or of
  the /dev/shm original: a volume may have one link only);
- `dense-data`: a dense image as large as the sparse image's data (the
  same file as `dense` when the sizes agree);
- `sparse`: a large sparse file holding that much random data in a few
  evenly spread extents.

Each round makes a fresh destination volume on the destination host
(raw, sparse, through the domain API) and deletes it after.  The upload
row sends the dense image from /dev/shm with `curl -T`; the copy rows run a
copy job on the destination host that reads the source host's image URL.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import xxhash

from . import MB, BenchError, MiB, log
from .clients import curl_upload
from .copyhosts import Host, Volume
from .copyreport import DD_WRITE_READING, CopyRow
from .limits import BLOCK, dd
from .procs import Meter, Usage
from .runner import Mismatch, round_failed
from .workspace import CHUNK, Workspace, copy_durable, drop_cached, file_digest, remove, settled


@dataclass(frozen=True)
class Image:
    name: str
    #: The file on the source host (inside its storage domain).
    path: Path
    size: int
    data: int
    #: xxh3-128 of the whole file, for a byte-level check of a dense result.
    digest: str | None
    #: The source daemon's own xxh3-128 block hash of the image.
    checksum: str = ""


def _write_from(src: Path, dst: Path, size: int, at: list[int]) -> str | None:
    """Write `size` bytes of src (cycled) into dst at each offset of `at`,
    len(at) equal pieces; fsync.  Returns the xxh3-128 if dst is dense."""
    piece = size // len(at)
    h = xxhash.xxh3_128()
    with open(src, "rb") as fin, open(dst, "r+b") as fout:
        for offset in at:
            fout.seek(offset)
            left = piece
            while left:
                data = fin.read(min(CHUNK, left))
                if not data:
                    fin.seek(0)
                    continue
                h.update(data)
                fout.write(data)
                left -= len(data)
        fout.flush()
        os.fsync(fout.fileno())
    drop_cached(dst)
    return h.hexdigest() if at == [0] else None


def sparse_offsets(size: int, data: int, extents: int) -> list[int]:
    """Where each of `extents` equal data pieces starts: evenly spread, MiB-aligned."""
    stride = size // extents // MiB * MiB
    if stride < data // extents:
        raise BenchError("the sparse image is too small for its data")
    return [i * stride for i in range(extents)]


def make_images(ws: Workspace, src: Host, data: int, sparse: int,
                extents: int, dense_from: Path) -> dict[str, Image]:
    """The images in src's domain; `dense_from` (the workspace's image or
    its on-disk copy) is copied as `dense`."""
    images: dict[str, Image] = {}
    dense = src.images / "dense.img"
    copy_durable(dense_from, dense)  # a copy: a volume may have one link only
    drop_cached(dense)
    images["dense"] = Image("dense", dense, ws.size, ws.size, ws.digest)
    if data == ws.size:
        images["dense-data"] = Image("dense-data", dense, ws.size, ws.size, ws.digest)
    else:
        path = src.images / "dense-data.img"
        path.write_bytes(b"")
        os.truncate(path, data)
        digest = _write_from(ws.image, path, data, [0])
        images["dense-data"] = Image("dense-data", path, data, data, digest)
    path = src.images / "sparse.img"
    path.write_bytes(b"")
    os.truncate(path, sparse)
    _write_from(ws.image, path, data, sparse_offsets(sparse, data, extents))
    images["sparse"] = Image("sparse", path, sparse, data, None)
    for name, image in images.items():  # the reference every result must match
        ticket = src.ticket(image.size, ["read"], path=image.path)
        try:
            images[name] = replace(image, checksum=src.checksum(ticket, image.data))
        finally:
            src.drop_ticket(ticket)
        drop_cached(image.path)
    return images


def check_job(job: dict[str, object], image: Image) -> None:
    """The job's own hashes: sent, source's, read back, all the source's."""
    result = job.get("result")
    if not isinstance(result, dict):
        raise Mismatch("the copy job reported no checksums")
    found = {"sent": result.get("checksum"), "source": result.get("source_checksum"),
             "destination": result.get("destination_checksum")}
    for what, value in found.items():
        got = value.get("checksum") if isinstance(value, dict) else None
        if got != image.checksum:
            raise Mismatch(f"job's {what} checksum {got} != the source's {image.checksum}")


def check_destination(dst: Host, volume: Volume, image: Image) -> None:
    """The destination daemon's checksum of its volume; for a dense image
    also the volume file's bytes, hashed by the bench itself."""
    ticket = dst.ticket(image.size, ["read"], volume=volume)
    try:
        theirs = dst.checksum(ticket, image.data)
    finally:
        dst.drop_ticket(ticket)
    if theirs != image.checksum:
        raise Mismatch(f"destination checksum {theirs} != the source's {image.checksum}")
    if image.digest is not None and volume.path is not None:
        size, digest = file_digest(volume.path)
        if (size, digest) != (image.size, image.digest):
            raise Mismatch(f"destination file holds other bytes ({size} bytes, {digest})")


@dataclass
class Sample:
    seconds: float
    wall: float
    verify_s: float | None
    src: Usage
    dst: Usage


def _transfer(row: CopyRow, src: Host, dst: Host, image: Image, volume: Volume,
              ws: Workspace) -> Sample:
    """One measured transfer into volume, with both daemons' usage."""
    if row.kind == "upload":
        ticket = dst.ticket(image.size, ["write"], volume=volume)
        try:
            meters = Meter(src.proc), Meter(dst.proc)
            seconds = curl_upload(ws.image, dst.url(ticket), image.size, None)
            u_src, u_dst = (m.done() for m in meters)
        finally:
            dst.drop_ticket(ticket)
        return Sample(seconds, seconds, None, u_src, u_dst)
    ticket = src.ticket(image.size, ["read"], path=image.path)
    try:
        meters = Meter(src.proc), Meter(dst.proc)
        job = dst.copy(src.url(ticket), volume, image.data)
        u_src, u_dst = (m.done() for m in meters)
    finally:
        src.drop_ticket(ticket)
    check_job(job.body, image)
    verify = None if job.verifying_seen is None else max(job.wall - job.verifying_seen, 0.0)
    return Sample(job.seconds, job.wall, verify, u_src, u_dst)


def _dd_copy(row: CopyRow, dst: Host, image: Image, first: bool) -> Sample:
    """The disk's ceiling for a copy within one disk: dd, O_DIRECT both ways."""
    dest = dst.images / f"dd-copy-{uuid.uuid4().hex[:8]}.img"
    drop_cached(image.path)
    try:
        seconds = dd(f"if={image.path}", f"of={dest}", "iflag=direct", "oflag=direct",
                     "conv=fsync")
        if first:
            if file_digest(dest) != (image.size, image.digest):
                raise Mismatch("dd's copy holds other bytes")
            row.verified = True
    finally:
        with settled():
            remove(dest)
    idle = Usage(cpu_s=0.0, peak_rss=0)
    return Sample(seconds, seconds, None, idle, idle)


def _dd_write_reading(row: CopyRow, dst: Host, image: Image, ws: Workspace,
                     first: bool) -> Sample:
    """The ceiling of a copy that reads back what it writes, on this disk:
    dd writes the image from /dev/shm into a new file while another dd
    reads the image's on-disk copy, both O_DIRECT; the writer's seconds."""
    dest = dst.images / f"dd-rw-{uuid.uuid4().hex[:8]}.img"
    drop_cached(image.path)
    reader = subprocess.Popen(
        ["dd", f"bs={BLOCK}", "status=none", f"if={image.path}", "of=/dev/null",
         "iflag=direct"], stderr=subprocess.PIPE)
    try:
        seconds = dd(f"if={ws.image}", f"of={dest}", "oflag=direct", "conv=fsync")
        if first:
            if file_digest(dest) != (image.size, image.digest):
                raise Mismatch("dd's copy holds other bytes")
            row.verified = True
    finally:
        _, err = reader.communicate()
        with settled():
            remove(dest)
    if reader.returncode:
        raise BenchError(f"the reading dd failed: {err.decode(errors='replace').strip()}")
    idle = Usage(cpu_s=0.0, peak_rss=0)
    return Sample(seconds, seconds, None, idle, idle)


def _volume_round(row: CopyRow, src: Host, dst: Host, image: Image, ws: Workspace,
                  first: bool) -> Sample:
    """Upload or copy into a fresh destination volume, deleted after."""
    with settled():
        volume = dst.new_volume(image.size)
        drop_cached(image.path)
    try:
        sample = _transfer(row, src, dst, image, volume, ws)
        if first:
            check_destination(dst, volume, image)
            row.verified = True
    finally:
        with settled():
            dst.delete_volume(volume)
    return sample


def run_round(row: CopyRow, src: Host, dst: Host, image: Image, ws: Workspace,
              i: int, rounds: int) -> None:
    try:
        if row.name == DD_WRITE_READING:
            sample = _dd_write_reading(row, dst, image, ws, i == 0)
        elif row.kind == "limits":
            sample = _dd_copy(row, dst, image, i == 0)
        else:
            sample = _volume_round(row, src, dst, image, ws, i == 0)
    except Exception as e:
        round_failed(row, i, e)
        return
    row.add(sample.seconds, sample.wall, sample.verify_s, sample.src, sample.dst)
    extra = f", verifying {sample.verify_s:.2f} s" if sample.verify_s is not None else ""
    log(f"{row.name} round {i + 1}/{rounds}: {sample.seconds:.2f} s, "
        f"{image.data / sample.seconds / MB:.1f} MB/s{extra}; cpu src "
        f"{sample.src.cpu_s:.2f} s, dst {sample.dst.cpu_s:.2f} s")
