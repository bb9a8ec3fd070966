"""The bench's scratch space: a work dir on a real disk and the source image.

Everything a run writes lives in one temp dir (removed at the end) plus the
random source image in /dev/shm, so reading the source never touches the
disk under test.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import xxhash

from . import BenchError, MiB, log

#: Filesystems that live in memory: O_DIRECT there measures nothing (and is
#: refused before Linux 6.6), so the work dir must not be on one.
MEMORY_FS = {"tmpfs", "ramfs", "devtmpfs"}
#: I/O size for making and hashing images: large enough that xxh3 runs at
#: memory speed, aligned for O_DIRECT.
CHUNK = 16 * MiB
SHM = Path("/dev/shm")
PREFIX = "sluice-bench-"
REPORTED_KIB = Path("/sys/module/page_reporting/parameters/reported_kib")
#: Measured: reported_kib grows by about 384 MiB every 2 s once it starts.
REPORT_RATE = 150 * MiB
#: Less than this freed is noise next to what other processes free.
SETTLE_MIN = 32 * MiB


@dataclass(frozen=True)
class Workspace:
    root: Path
    #: Random bytes, made once per run with os.urandom.
    image: Path
    size: int
    digest: str
    #: A copy of the image on the disk under test: what downloads serve.
    source: Path


def fs_type(path: Path) -> str:
    """The type of the filesystem holding path, from /proc/self/mounts."""
    best, kind = "", "unknown"
    real = str(path.resolve())
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            mnt = fields[1].replace("\\040", " ")
            inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= len(best):
                best, kind = mnt, fields[2]
    return kind


def make_workdir(parent: Path) -> Path:
    if not parent.is_dir():
        raise BenchError(f"work dir parent {parent} is not a directory")
    kind = fs_type(parent)
    if kind in MEMORY_FS:
        raise BenchError(f"work dir parent {parent} is on {kind}; O_DIRECT needs a real disk")
    reap_stale(parent)
    root = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
    (root / "bench.pid").write_text(str(os.getpid()))
    return root


def reap_stale(parent: Path) -> None:
    """Remove what a killed bench left (its peers died with it: PDEATHSIG)."""
    for root in parent.glob(f"{PREFIX}*"):
        try:
            os.kill(int((root / "bench.pid").read_text()), 0)
            continue  # a bench that is still running
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            continue  # not ours to judge
        shutil.rmtree(root, ignore_errors=True)
        remove(SHM / f"{root.name}.img")
        shutil.rmtree(SHM / f"{root.name}.src", ignore_errors=True)  # bench.copy's


def aligned_buffer(size: int = CHUNK) -> mmap.mmap:
    """Page-aligned anonymous memory, as O_DIRECT wants."""
    return mmap.mmap(-1, size, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)


def file_digest(path: Path) -> tuple[int, str]:
    """(size, xxh3-128 hex) of a file, read with O_DIRECT where possible.

    Direct reads keep the check out of the page cache, which is slow to fill
    on the VM kind this runs on and would disturb the next measured round.
    """
    h = xxhash.xxh3_128()
    total = 0
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        fd = os.open(path, os.O_RDONLY)
    buf = aligned_buffer()
    view = memoryview(buf)
    try:
        while n := os.readv(fd, [buf]):
            h.update(view[:n])
            total += n
    finally:
        view.release()
        buf.close()
        os.close(fd)
    return total, h.hexdigest()


def write_random(path: Path, size: int) -> str:
    """Fill a new file with size random bytes; return their xxh3-128."""
    h = xxhash.xxh3_128()
    with open(path, "wb") as f:
        left = size
        while left:
            data = os.urandom(min(CHUNK, left))
            h.update(data)
            f.write(data)
            left -= len(data)
    return h.hexdigest()


def copy_durable(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, CHUNK)
        fout.flush()
        os.fsync(fout.fileno())


def drop_cached(path: Path) -> None:
    """Write back and evict one file's pages, so the next read hits the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def mem_free() -> int:
    """MemFree from /proc/meminfo, in bytes."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemFree:"):
                return int(line.split()[1]) * 1024
    return 0


def settle(freed: int) -> float:
    """Wait until `freed` bytes of memory are handed back to the host.

    On the VM kind this runs on, the guest reports freed pages to the host
    (page_reporting, reported_kib) at about 190 MiB/s, in steps every 2 s,
    and a reported page costs a fault when it is used again.  A round that
    starts right after a large delete (nginx's upload, curl -o's download)
    runs on warm memory, one that starts later on cold memory; waiting for
    the report makes every round start cold, whatever ran before it.
    Returns the seconds waited.  Without the module, nothing to wait for.
    """
    if freed < SETTLE_MIN or not REPORTED_KIB.exists():
        return 0.0
    start = time.monotonic()
    deadline = start + 3.0 + freed / REPORT_RATE
    first = int(REPORTED_KIB.read_text()) * 1024
    while time.monotonic() < deadline:
        time.sleep(0.25)
        if int(REPORTED_KIB.read_text()) * 1024 - first >= freed * 0.9:
            break
    return time.monotonic() - start


@contextlib.contextmanager
def settled() -> Iterator[None]:
    """Write back what the block left dirty, then settle() what it freed."""
    free = mem_free()
    yield
    os.sync()
    if waited := settle(mem_free() - free):
        log(f"waited {waited:.1f} s for freed memory to be reported")


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


@contextlib.contextmanager
def workspace(parent: Path, size: int) -> Iterator[Workspace]:
    """Make the work dir, the image and its on-disk copy; remove them after."""
    if shutil.disk_usage(SHM).free < size + 64 * MiB:
        raise BenchError(f"{SHM} has no room for a {size // MiB} MiB image")
    root = make_workdir(parent)
    image = SHM / f"{root.name}.img"
    try:
        if shutil.disk_usage(root).free < 4 * size:
            raise BenchError(f"{root} needs {4 * size // MiB} MiB free")
        digest = write_random(image, size)
        source = root / "download-source.img"
        with settled():
            copy_durable(image, source)
            drop_cached(source)
        yield Workspace(root=root, image=image, size=size, digest=digest, source=source)
    finally:
        remove(image)
        shutil.rmtree(root, ignore_errors=True)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the peer binds it just after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
