"""Background checks of every domain in the pool map.

Each check is one blocking call in the monitor's own small executor (a hung
NFS server must not starve image transfers of I/O threads), bounded by a
timeout.  ``GET /stats`` reports the results with the map version in
force: that is how the engine sees a host whose map is stale or whose
storage is failing (vdsm's repoStats, plus the version it lacks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from volume.blockdomain import open_block_domain
from volume.errors import Error
from volume.filedomain import open_file_domain

from .pool import DomainEntry, PoolMap

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Health:
    reachable: bool
    total: int | None
    free: int | None
    last_check: float  # epoch seconds
    latency: float  # seconds the check took
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def probe(entry: DomainEntry) -> Health:
    """Check one domain: can we see its storage, how much room is left, and
    does it hold this domain (an empty directory or a device of another
    domain is reachable, and still an error the engine must see)."""
    start = time.monotonic()
    try:
        if entry.type == "file":
            path = entry.location[0]
            os.listdir(path)
            st = os.statvfs(path)
            total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        else:
            total, free = 0, None
            for dev in entry.location:
                fd = os.open(dev, os.O_RDONLY)
                try:
                    total += os.lseek(fd, 0, os.SEEK_END)
                    os.pread(fd, 4096, 0)
                finally:
                    os.close(fd)
    except OSError as e:
        return Health(False, None, None, time.time(), time.monotonic() - start,
                      f"{e.strerror or e}")
    error = None
    try:
        if entry.type == "file":
            open_file_domain(entry.location[0], entry.uuid)
        else:
            # The room left is what the volume table leaves (no statvfs of
            # a device says it), and its total is without metadata areas.
            space = open_block_domain(entry.location, entry.uuid).space()
            total, free = space.total, space.free
    except Error as e:
        error = e.detail
    except OSError as e:
        error = f"{e.strerror or e}"
    return Health(True, total, free, time.time(), time.monotonic() - start, error)


class Monitor:
    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self.health: dict[str, Health] = {}
        #: The storage (type, location) each health result is about.
        self._checked: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._executor = ThreadPoolExecutor(4, thread_name_prefix="monitor")
        self._wake = asyncio.Event()
        self._pool: PoolMap | None = None

    def update(self, pool: PoolMap) -> None:
        """A new map is in force: forget dropped or moved domains, check now.

        A domain whose storage moved (another directory or other devices)
        is unchecked until its new location is: the old one's health says
        nothing about it.
        """
        self._pool = pool
        for sd in list(self.health):
            if not self._current(pool, sd, self._checked[sd]):
                del self.health[sd]
                del self._checked[sd]
        self._wake.set()

    @staticmethod
    def _current(pool: PoolMap | None, sd: str, storage: tuple[str, tuple[str, ...]]) -> bool:
        """Whether ``storage`` (type, location) is still where ``sd`` is."""
        entry = pool.domains.get(sd) if pool is not None else None
        return entry is not None and (entry.type, entry.location) == storage

    async def check_all(self) -> None:
        pool = self._pool
        if pool is None:
            return
        loop = asyncio.get_running_loop()

        async def one(entry: DomainEntry) -> None:
            try:
                h = await asyncio.wait_for(
                    loop.run_in_executor(self._executor, probe, entry), self.timeout
                )
            except TimeoutError:
                h = Health(False, None, None, time.time(), self.timeout,
                           f"check did not finish in {self.timeout} s")
            if not h.reachable:
                log.warning("domain %s unreachable: %s", entry.uuid, h.error)
            storage = (entry.type, entry.location)
            if self._current(self._pool, entry.uuid, storage):
                self.health[entry.uuid] = h
                self._checked[entry.uuid] = storage

        await asyncio.gather(*(one(e) for e in pool.domains.values()))

    async def run_check(self, check: Callable[[PoolMap], None], pool: PoolMap) -> None:
        """``check(pool)`` (blocking) in the monitor's executor; a check that
        does not finish in time is given up on (and may go on in its
        thread): the storage it waits for is what the monitor reports."""
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(self._executor, check, pool),
                                   self.timeout)
        except TimeoutError:
            log.warning("checking the locations of map version %d took over %s s; "
                        "applying it, the monitor reports what is unreachable",
                        pool.map_version, self.timeout)

    async def run(self) -> None:
        while True:
            self._wake.clear()
            await self.check_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
