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

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class IO:
    def __init__(self, workers: int, buffer_size: int, pool_buffers: int) -> None:
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="io")
        self.buffer_size = buffer_size
        self._pool_max = pool_buffers
        # Idle buffers by size: image transfers and OVF streams use different sizes.
        self._free: dict[int, list[mmap.mmap]] = {}

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> asyncio.Future[T]:
        """Start ``fn`` in a worker thread; the future resolves on the loop."""
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        return asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.submit(fn, *args, **kwargs)

    def get_buffer(self, size: int = 0) -> mmap.mmap:
        """An aligned buffer of ``size`` bytes (default ``buffer_size``);
        give it back with put_buffer."""
        size = size or self.buffer_size
        free = self._free.get(size)
        if free:
            return free.pop()
        return aligned_buffer(size)

    def put_buffer(self, buf: mmap.mmap) -> None:
        if buf.closed:
            return
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
