"""Work that the pool map must keep allowing while it runs: :class:`MapWatch`.

A request checks the map once, when it starts.  Work that goes on for a
while (an OVF store update: its body, its commit, then the copies into the
other stores) must also stop when a map put in force meanwhile no longer
allows it, as copy jobs do (:meth:`PoolManager.watch`).  From that moment
:meth:`MapWatch.check` raises, and the step running under
:meth:`MapWatch.interruptible` is cancelled.  Both give the error a new
request would get for the new map: 404 for a domain that left it, 409 for
a status that refuses the access.  The detail says the map changed meanwhile.

Steps that cannot be interrupted, such as a call running in an I/O worker,
call :meth:`MapWatch.check` at the points where they may still stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from volume.errors import Error

from .pool import Access, PoolMap
from .poolmgr import PoolManager

log = logging.getLogger(__name__)
T = TypeVar("T")


class MapWatch:
    """Access to one domain, checked now and watched until :meth:`close`.

    ``what`` names the work in the error detail, e.g. "the OVF store update".
    """

    def __init__(self, mgr: PoolManager, sd_uuid: str, access: Access, what: str) -> None:
        # Checked and registered with no await in between: any map put in
        # force after this check reaches the watcher.
        mgr.check(sd_uuid, access)
        self._sd_uuid = sd_uuid
        self._access = access
        self._what = what
        #: Why the work must stop, once a map refused it: the error class
        #: (raised anew by each check) and its detail.
        self._stop: tuple[type[Error], str] | None = None
        self._step: asyncio.Future[Any] | None = None
        self._unwatch = mgr.watch(self._changed)

    def close(self) -> None:
        """Stop watching (idempotent)."""
        self._unwatch()

    def check(self) -> None:
        """Raise if a map put in force since the start refuses the access.

        Safe from any thread: the watcher only ever sets the reason once,
        on the event loop.
        """
        stop = self._stop
        if stop is not None:
            cls, detail = stop
            raise cls(detail)

    async def interruptible(self, step: Coroutine[Any, Any, T]) -> T:
        """Run ``step`` as a task that a refusing map cancels; that cancel
        becomes the :meth:`check` error.  A cancel of the caller itself
        (a shutdown) stays a cancel."""
        if self._stop is not None:
            step.close()  # never started: no "never awaited" warning
            self.check()
        task = asyncio.ensure_future(step)
        self._step = task
        try:
            return await task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if task.cancelled() and self._stop is not None and not (me and me.cancelling()):
                self.check()
            raise
        finally:
            self._step = None

    def _changed(self, pool: PoolMap) -> None:
        if self._stop is not None:
            return
        try:
            pool.check(self._sd_uuid, self._access)
        except Error as e:
            # PoolMap.check raises NotFound or DomainNotAvailable, both made
            # from a detail alone.
            self._stop = (type(e), f"the pool map changed during {self._what} (map "
                                   f"version {pool.map_version}): {e.detail}")
            log.warning("stopping %s on storage domain %s: %s", self._what, self._sd_uuid,
                        e.detail)
            if self._step is not None:
                self._step.cancel()
