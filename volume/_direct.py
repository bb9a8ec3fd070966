"""Positional I/O at any alignment on a descriptor that may be ``O_DIRECT``.

Shared by :mod:`volume.file` and :mod:`volume.block`.  With ``O_DIRECT`` the
kernel rejects (EINVAL) any transfer whose offset, length or memory address
is not a multiple of the logical block size (open(2), "O_DIRECT").  A request
is cut into at most three parts: an unaligned head inside one block, a run of
whole blocks, and an unaligned tail inside one block.  Whole blocks go
straight to the kernel when the memory is aligned, or through a scratch
buffer when it is not; heads and tails are read-modify-written.

Read-modify-write is the one place where two requests on *distinct* byte
ranges can still collide: both halves of one block.  It therefore runs under
a lock shared by every volume open on the same inode or device, not just by
one instance.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from .buffers import aligned_buffer, is_aligned

# Unaligned memory and zero-filling go through steps of this size, one
# syscall each.  Measured bouncing 512 MiB of 8 MiB unaligned writes to ext4
# on virtio (O_DIRECT, median of 5, noisy): 256 KiB 1.2 GiB/s, 1 MiB
# 1.5 GiB/s, 4 MiB 1.7 GiB/s.  1 MiB (also imageio's zero buffer) keeps most
# of it with a quarter of the memory per busy executor thread.
SCRATCH_SIZE = 1024 * 1024


class SharedLock:
    """A re-entrant lock that every volume open on one inode or device shares.

    Re-entrant because a caller that holds it to change the file size (see
    :meth:`AlignedIO.write`) runs the read-modify-write, which takes it too.
    """

    __slots__ = ("__weakref__", "_lock", "block_size")

    def __init__(self) -> None:
        self._lock = threading.RLock()
        #: The direct-I/O alignment every volume open on this inode uses.
        self.block_size: int | None = None

    def agree(self, block_size: int) -> int:
        """The alignment to use for a direct descriptor that probed ``block_size``.

        Every direct volume on one inode must use the same alignment: with
        two sizes, a read-modify-write of a 4096-byte block could span a
        concurrent whole-block 512-byte write of another volume (which takes
        no lock) and write its old bytes back.  The first opener decides;
        its size was probed on this very file, so it works for the others.
        """
        if block_size <= 1:
            return block_size  # buffered: no alignment to agree on
        with _locks_guard:
            if self.block_size is None:
                self.block_size = block_size
            return self.block_size

    def __enter__(self) -> SharedLock:
        self._lock.acquire()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._lock.release()


_locks: weakref.WeakValueDictionary[tuple[int, ...], SharedLock] = (
    weakref.WeakValueDictionary()
)
_locks_guard = threading.Lock()


def shared_lock(fd: int) -> SharedLock:
    """The lock for the inode (or, for a block device, the device) behind ``fd``."""
    st = os.fstat(fd)
    key = (st.st_rdev,) if stat.S_ISBLK(st.st_mode) else (st.st_dev, st.st_ino)
    with _locks_guard:
        lock = _locks.get(key)
        if lock is None:
            lock = _locks[key] = SharedLock()
        return lock


def split(offset: int, length: int, block_size: int) -> list[tuple[int, int, bool]]:
    """Cut ``[offset, offset+length)`` into (start, length, whole_blocks) parts.

    At most three parts: an unaligned head within one block, a run of whole
    blocks (``whole_blocks=True``), and an unaligned tail within one block.
    An empty range has no parts: no block is read-modify-written for it.
    """
    end = offset + length
    parts = []
    pos = offset
    if pos % block_size and pos < end:
        head_end = min(end, pos - pos % block_size + block_size)
        parts.append((pos, head_end - pos, False))
        pos = head_end
    whole_end = end - end % block_size
    if whole_end > pos:
        parts.append((pos, whole_end - pos, True))
        pos = whole_end
    if end > pos:
        parts.append((pos, end - pos, False))
    return parts


def pread_full(fd: int, buf: memoryview, offset: int, block_size: int) -> int:
    """Fill ``buf`` from ``offset``; return the byte count, short only at EOF.

    A direct read that ends short of an unaligned position has hit EOF; the
    next read would start unaligned and fail with EINVAL, so stop there.
    """
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n == 0:
            break
        done += n
        if (offset + done) % block_size:
            break
    return done


def pwrite_full(fd: int, buf: memoryview, offset: int) -> None:
    """Write all of ``buf`` at ``offset``, looping over short writes."""
    done = 0
    while done < len(buf):
        n = os.pwrite(fd, buf[done:], offset + done)
        if n == 0:
            raise OSError(errno.EIO, "write made no progress")
        done += n


class AlignedIO:
    """Reads and writes of any alignment on ``fd``, honouring ``block_size``.

    ``fd`` is not owned: :meth:`close` frees only the buffers.
    ``block_size`` is the required alignment (1 for buffered descriptors).
    ``regular_file`` says the descriptor is a file that grows when written
    past EOF; block devices have a fixed size.
    """

    def __init__(self, fd: int, block_size: int, *, regular_file: bool) -> None:
        self.fd = fd
        self.lock = shared_lock(fd)
        # Block devices report their alignment (BLKSSZGET); only files probe,
        # so only files need to agree.  A device may also be reused with
        # another sector size while an old volume on it is still alive.
        self.block_size = self.lock.agree(block_size) if regular_file else block_size
        self._regular_file = regular_file
        self._free: list[memoryview] = []
        self._pool_guard = threading.Lock()
        self._zeros: memoryview | None = None
        self._closed = False

    def close(self) -> None:
        # Late I/O through a closed volume fails (EBADF) instead of reaching
        # whatever file reuses the descriptor number.
        self.fd = -1
        with self._pool_guard:
            self._closed = True
            buffers, self._free = self._free, []
            if self._zeros is not None:
                buffers.append(self._zeros)
                self._zeros = None
        for view in buffers:
            view.release()

    @contextmanager
    def _scratch(self) -> Iterator[memoryview]:
        with self._pool_guard:
            view = self._free.pop() if self._free else memoryview(aligned_buffer(SCRATCH_SIZE))
        try:
            yield view
        finally:
            with self._pool_guard:
                if self._closed:
                    view.release()
                else:
                    self._free.append(view)

    def readinto(self, offset: int, buf: memoryview) -> int:
        """Read up to ``len(buf)`` bytes at ``offset``; short only at EOF."""
        bs = self.block_size
        if bs == 1:
            return pread_full(self.fd, buf, offset, 1)
        total = 0
        for start, length, whole in split(offset, len(buf), bs):
            part = buf[start - offset : start - offset + length]
            if whole and is_aligned(part, bs):
                n = pread_full(self.fd, part, start, bs)
            else:
                n = self._bounce_read(start, part)
            total += n
            if n < length:
                break
        return total

    def _bounce_read(self, offset: int, buf: memoryview) -> int:
        bs = self.block_size
        done = 0
        with self._scratch() as scratch:
            while done < len(buf):
                pos = offset + done
                skip = pos % bs
                want = min(len(buf) - done, len(scratch) - skip)
                span = -(-(skip + want) // bs) * bs
                n = pread_full(self.fd, scratch[:span], pos - skip, bs)
                got = max(0, min(n - skip, want))
                buf[done : done + got] = scratch[skip : skip + got]
                done += got
                if got < want:
                    break
        return done

    def write(self, offset: int, buf: memoryview) -> None:
        """Write all of ``buf`` at ``offset``.

        On a regular file, a write that ends past EOF holds the shared lock
        for its whole duration: a read-modify-write of the last block briefly
        extends the file to the block boundary and then truncates it back
        (see :meth:`_rmw`), which must not cut off a concurrent extension.
        """
        if self.block_size == 1:
            pwrite_full(self.fd, buf, offset)
        elif self._regular_file and offset + len(buf) > os.fstat(self.fd).st_size:
            with self.lock:
                self._write_parts(offset, buf)
        else:
            self._write_parts(offset, buf)

    def _write_parts(self, offset: int, buf: memoryview) -> None:
        bs = self.block_size
        for start, length, whole in split(offset, len(buf), bs):
            part = buf[start - offset : start - offset + length]
            if not whole:
                self._rmw(start, part)
            elif is_aligned(part, bs):
                pwrite_full(self.fd, part, start)
            else:
                with self._scratch() as scratch:
                    # SCRATCH_SIZE is a multiple of any block size, so every
                    # step stays aligned.
                    for i in range(0, length, len(scratch)):
                        step = part[i : i + len(scratch)]
                        scratch[: len(step)] = step
                        pwrite_full(self.fd, scratch[: len(step)], start + i)

    def _rmw(self, offset: int, data: memoryview) -> None:
        """Write ``data``, which lies within one block, keeping the block's other bytes."""
        bs = self.block_size
        block_start = offset - offset % bs
        with self.lock, self._scratch() as scratch:
            block = scratch[:bs]
            n = pread_full(self.fd, block, block_start, bs)
            if n < bs:
                block[n:] = bytes(bs - n)
            block[offset - block_start : offset - block_start + len(data)] = data
            pwrite_full(self.fd, block, block_start)
            if n < bs and self._regular_file:
                # The block crossed EOF (at block_start + n) and the direct
                # write of a whole block moved EOF to the block boundary:
                # cut it back to exactly max(old size, end of data).
                os.ftruncate(self.fd, max(block_start + n, offset + len(data)))

    def write_zeros(self, offset: int, length: int) -> None:
        """Write ``length`` zero bytes at ``offset`` from a reused zero buffer."""
        if self._zeros is None:
            self._zeros = memoryview(aligned_buffer(SCRATCH_SIZE)).toreadonly()
        zeros = self._zeros
        bs = self.block_size
        pos, end = offset, offset + length
        while pos < end:
            # An unaligned first step stops at the block boundary, so every
            # later step starts aligned in the file and in the buffer.
            n = min(end - pos, bs - pos % bs if pos % bs else len(zeros))
            self.write(pos, zeros[:n])
            pos += n
