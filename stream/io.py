"""The daemon's bounded I/O executor and its pool of aligned buffers.

Volume calls block, so they run here and never on the event loop.  Each call
is a whole unit of work (open+probe, or write one 16 MiB buffer), never one
syscall per hop.  The logging context (transfer id) follows the work into
the worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import mmap
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from volume.buffers import aligned_buffer

from .errors import Overloaded

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class IO:
    def __init__(self, workers: int, buffer_size: int, pool_buffers: int,
                 max_buffer_memory: int = 0) -> None:
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="io")
        self.buffer_size = buffer_size
        self._pool_max = pool_buffers
        # Idle buffers by size: image transfers and OVF streams use different sizes.
        self._free: dict[int, list[mmap.mmap]] = {}
        #: Bytes of the buffers lent out (0: no bound).
        self._max_in_use = max_buffer_memory
        self.bytes_in_use = 0
        self.buffers_in_use = 0

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> asyncio.Future[T]:
        """Start ``fn`` in a worker thread; the future resolves on the loop."""
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        return asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.submit(fn, *args, **kwargs)

    def check_room(self, count: int, size: int = 0) -> None:
        """Raise Overloaded unless ``count`` more buffers of ``size`` fit in
        the bound: a request asks before its answer starts, so that it gets
        a clean 503 rather than a connection cut in the middle."""
        size = size or self.buffer_size
        if self._max_in_use and self.bytes_in_use + count * size > self._max_in_use:
            raise Overloaded(
                f"Transfer buffers are at their bound of {self._max_in_use >> 20} MiB; "
                "try again later"
            )

    def get_buffer(self, size: int = 0) -> mmap.mmap:
        """An aligned buffer of ``size`` bytes (default ``buffer_size``);
        give it back with put_buffer (or retire it)."""
        size = size or self.buffer_size
        self.check_room(1, size)
        free = self._free.get(size)
        buf = free.pop() if free else aligned_buffer(size)
        self.bytes_in_use += size
        self.buffers_in_use += 1
        return buf

    def retire(self, buf: mmap.mmap) -> None:
        """Stop counting ``buf``, which will never come back (a transport
        may still refer to it; the garbage collector frees it later)."""
        self.bytes_in_use -= len(buf)
        self.buffers_in_use -= 1

    def put_buffer(self, buf: mmap.mmap) -> None:
        if buf.closed:
            return
        self.retire(buf)
        free = self._free.setdefault(len(buf), [])
        if sum(map(len, self._free.values())) < self._pool_max:
            free.append(buf)
        else:
            with contextlib.suppress(BufferError):
                buf.close()

    def close(self) -> None:
        # Handlers are done by now; do not block the loop waiting for idle threads.
        self._executor.shutdown(wait=False, cancel_futures=True)
        for free in self._free.values():
            for buf in free:
                # A failed request's traceback may still hold a view of it;
                # the garbage collector frees it then.
                with contextlib.suppress(BufferError):
                    buf.close()
        self._free.clear()
