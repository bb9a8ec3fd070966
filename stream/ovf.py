"""OVF store streams: receive a tar into a domain's stores (serving it back
is :mod:`stream.ovfread`).

An incoming stream goes into the store that was updated longest ago, each
buffer checked by the sans-IO tar reader before or while it is written.  Only a
complete, valid stream is committed; the answer goes out then, and the
archive is copied into the other stores after it (:class:`Updates`).  Any
failure leaves the previous generation as the newest valid one.  One
update per domain at a time.  A pool map that stops OVF writes to the
domain stops its update: uncommitted before the commit, its copies after.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from volume.base import Volume
from volume.errors import Conflict, Error, OutOfRange
from volume.ovfstore import OvfStores, Update
from volume.ovfupdate import next_generation
from volume.region import RegionVolume
from volume.sd import StorageDomain

from . import ovfstage, upload
from .errors import ClientGone, TooSlow
from .io import IO as IOExecutor
from .mapwatch import MapWatch
from .wire.tarread import OvfTarReader, Summary

log = logging.getLogger(__name__)

Reader = Callable[[], Awaitable[bytes]]


#: How long an update waits for the domain's previous one: a store of 128
#: MiB is written in seconds, so longer means a slow or stuck client, and
#: the engine retries later.
LOCK_WAIT = 30.0
#: How long ``ovf-store/info`` waits for a running update (its copies
#: included) before it answers with ``"updating": true``: well inside the
#: engine's 30 s request timeout, which polls again while it says so.
INFO_WAIT = 10.0


class StoreTooSmall(Error):
    http_status = 413
    code = "ovf-store-too-small"


@dataclass(frozen=True)
class Committed:
    generation: int
    tar_length: int
    digest: str
    entries: int
    #: Other stores the archive is being copied into after this answer.
    copies_pending: int

    def to_json(self) -> dict[str, Any]:
        return {"generation": self.generation, "tar_length": self.tar_length,
                "digest": self.digest, "entries": self.entries,
                "copies_pending": self.copies_pending}


class _CheckedVolume(RegionVolume):
    """The target's archive area, for zstd bodies: each decoded write checked
    by the tar reader at the same time, in a thread of its own while this
    one writes the same bytes (both only read the buffer).  A bad buffer may reach
    the target before the error does; the target is marked updating, and
    the update is aborted, so no reader ever takes it."""

    def __init__(self, inner: Volume, reader: OvfTarReader, checker: ThreadPoolExecutor) -> None:
        super().__init__(inner, 0, inner.size())
        self._reader = reader
        self._checker = checker

    def write(self, offset: int, data: memoryview) -> None:
        checked = self._checker.submit(self._reader.feed, data)
        try:
            super().write(offset, data)
        finally:
            checked.result()  # never return while the reader still uses data

    def close(self) -> None:
        """The update owns the area; see :meth:`Update.seal`."""


class Updates:
    """One update per domain at a time, and the copies into the other
    stores that go on after the answer (:meth:`Update.replicate`).

    The answer goes out once the target store is committed: the archive is
    then durable and served, and the copies (reading the target back,
    checking its digest, then writing each other store) only add replicas
    of it.  The domain's lock is held until they are done, so the next
    update and ``info`` wait for them.
    """

    def __init__(self, staging: Path | None = None) -> None:
        #: The data directory, where the body for a domain with a single
        #: store is staged (:mod:`stream.ovfstage`); None writes it straight
        #: into that store.
        self._staging = staging
        #: Domains whose pending archive (:mod:`stream.ovfstage`) a crash
        #: or an error left uncommitted; restored on the next touch.
        self._pending = ovfstage.pending(staging) if staging is not None else set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: What went wrong copying the last update of each domain, if anything.
        self.copy_errors: dict[str, list[str]] = {}

    def lock(self, sd_uuid: str) -> asyncio.Lock:
        return self._locks.setdefault(sd_uuid, asyncio.Lock())

    async def settled(self, sd_uuid: str, wait: float | None = None) -> bool:
        """Whether no update of the domain runs (its copies included),
        waiting up to ``wait`` seconds for it to end (an update whose
        client trickles its body may run until its deadline; copies on
        slow storage for minutes).  ``wait``: INFO_WAIT if None."""
        lock = self.lock(sd_uuid)
        try:
            async with asyncio.timeout(INFO_WAIT if wait is None else wait):
                await lock.acquire()
        except TimeoutError:
            return False
        lock.release()
        return True

    async def restore(self, io: IOExecutor, storage: StorageDomain,
                      check: Callable[[], None]) -> None:
        """Commit the domain's pending archive if a crash or an error left
        one and none of its stores is valid (:func:`ovfstage.restore`):
        before the stores are read or updated.  ``check`` says whether the
        pool map allows OVF writes to the domain; while it does not, the
        archive waits.  So it does while an update of the domain runs: a
        reader never waits for one (that update restored it first, or is
        committing it now).
        """
        lock = self.lock(storage.uuid)
        if storage.uuid not in self._pending or lock.locked():
            return
        await lock.acquire()  # free: nothing ran since the test above
        try:
            await self._restore(io, storage, check)
        finally:
            lock.release()

    async def _restore(self, io: IOExecutor, storage: StorageDomain,
                       check: Callable[[], None]) -> None:
        """:meth:`restore` with the domain's lock held; errors are logged."""
        if storage.uuid not in self._pending or self._staging is None:
            return
        try:
            check()
            await io.run(ovfstage.restore, self._staging, storage, check)
        except Exception as e:
            log.warning("pending OVF archive of %s not restored yet: %s", storage.uuid, e)
            return
        self._pending.discard(storage.uuid)

    async def _drop(self, io: IOExecutor, sd_uuid: str) -> None:
        """Remove a committed update's pending archive; if that fails, the
        next touch finds the store valid and removes it then."""
        assert self._staging is not None
        try:
            await io.run(ovfstage.drop, self._staging, sd_uuid)
        except OSError as e:
            log.warning("pending OVF archive of %s not removed: %s", sd_uuid, e)
            return
        self._pending.discard(sd_uuid)

    def _spawn(self, lock: asyncio.Lock, io: IOExecutor, update: Update,
               watch: MapWatch) -> None:
        sd_uuid = update.target.volume.sd_uuid

        async def run() -> None:
            try:
                await io.run(update.replicate, watch.check)
                self.copy_errors[sd_uuid] = update.replica_errors
            except Exception as e:
                log.exception("OVF store copies of %s failed", sd_uuid)
                self.copy_errors[sd_uuid] = [f"copying failed: {e}"]
            finally:
                watch.close()
                lock.release()
        task = asyncio.create_task(run(), name="ovf-replicate")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Let running copies finish (a shutdown must not cut them short
        needlessly, though a crash there is safe too)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def receive(
        self, read: Reader, io: IOExecutor, storage: StorageDomain, watch: MapWatch, *,
        zstd: bool, idle_timeout: float, buffer_size: int, depth: int = 1,
        require_manifest: bool = False, length: int | None = None,
        deadline: float = 0.0, client_gone: Callable[[], bool] = lambda: False,
    ) -> Committed:
        """Stream ``read`` into the stores of ``storage``; the committed archive.

        ``watch`` sees whether the pool map still allows OVF store writes
        to the domain.  A map that stops allowing them before the commit
        ends the update uncommitted (the body is cut off, or the commit
        refused), and this raises the watch's error; after the commit, it
        stops the copies.  The update owns ``watch``: it closes it when it
        ends, copies included.

        Another update of the domain is waited for at most LOCK_WAIT
        seconds (then 409), and one whose client left meanwhile touches
        no store.  ``deadline`` (seconds, 0: none) bounds the body's
        arrival: a client trickling a byte now and then would otherwise
        keep the domain's updates waiting for good.
        """
        lock = self.lock(storage.uuid)
        try:
            async with asyncio.timeout(LOCK_WAIT):
                await lock.acquire()
        except BaseException as e:
            watch.close()
            if isinstance(e, TimeoutError):
                raise Conflict(f"another OVF store update of domain {storage.uuid} has "
                               f"run for over {LOCK_WAIT:.0f} s; try again later") from None
            raise
        try:
            if client_gone():
                raise ClientGone("the client left while waiting for the domain's "
                                 "previous OVF store update; no store was touched")
            watch.check()  # the map may have changed while the previous update copied
            # A pending archive is restored first: if this body turns out
            # bad, the domain still has a good store.
            await self._restore(io, storage, watch.check)
            stores = await io.run(OvfStores.open, storage)
            if length is not None and not zstd and length > stores.capacity:
                # Refused before any store is touched, not after a store's
                # worth of the body was written and then thrown away.
                raise _too_small(storage, stores)
            # One store: the body is staged first, so that a bad or cut-off
            # one never costs the domain its only good archive.
            staged: ovfstage.Staging | None = None
            if self._staging is not None and len(stores.stores) == 1:
                staged = await io.run(ovfstage.Staging, self._staging, stores.capacity)
            update: Update | None = None
            try:
                if staged is None:
                    update = await io.run(stores.begin)
                    target = update.volume
                else:
                    target = staged.volume
                async with asyncio.timeout(deadline or None):
                    summary = await watch.interruptible(_stream(
                        read, io, storage, stores, target, zstd=zstd,
                        idle_timeout=idle_timeout, length=length, buffer_size=buffer_size,
                        depth=depth, require_manifest=require_manifest, check=watch.check))
                if update is None:  # staged, whole and valid: kept, then into the store
                    assert staged is not None
                    watch.check()
                    states = await io.run(stores.states, True)
                    generation = next_generation(states)
                    await io.run(staged.keep, storage.uuid, summary.tar_length,
                                 summary.digest, generation)
                    self._pending.add(storage.uuid)

                    def restamp(given: int, staged: ovfstage.Staging = staged,
                                summary: Summary = summary) -> None:
                        # Another host updated meanwhile: the kept archive
                        # takes the number the store is about to be marked
                        # with, before it is (restore matches the two).
                        if given != generation:
                            staged.stamp(given, summary.tar_length, summary.digest)
                    update = await io.run(stores.begin, 1, restamp)
                    await io.run(ovfstage.copy_into, target, update.volume,
                                 summary.tar_length, watch.check)
                # Between the last chunk and here, then (in the worker) last
                # before the commit makes the archive visible.
                watch.check()
                record = await io.run(update.seal, summary.tar_length, summary.digest,
                                      read_back=staged is not None, check=watch.check)
            except BaseException as e:
                if update is not None:
                    await asyncio.shield(io.run(update.abort))
                if isinstance(e, TimeoutError):
                    raise TooSlow(f"the OVF tar did not arrive within {deadline:.0f} s; "
                                  "nothing was committed") from None
                raise
            finally:
                if staged is not None:
                    await io.run(staged.close)
            if staged is not None:  # committed: the pending archive is done with
                await self._drop(io, storage.uuid)
        except BaseException:
            lock.release()
            watch.close()
            raise
        self._spawn(lock, io, update, watch)
        log.info("OVF store of %s: generation %d, %d bytes, %d entries, digest %s",
                 storage.uuid, record.generation, record.tar_length, len(summary.entries),
                 record.digest)
        return Committed(record.generation, record.tar_length, record.digest,
                         len(summary.entries), len(stores.stores) - 1)


async def _stream(
    read: Reader, io: IOExecutor, storage: StorageDomain, stores: OvfStores, target: Volume,
    *, zstd: bool, idle_timeout: float, length: int | None, buffer_size: int, depth: int,
    require_manifest: bool, check: Callable[[], None],
) -> Summary:
    """The body into the target, checked as it goes; the reader's summary.

    A plain body is checked on the event loop before each buffer goes to
    the worker (upload's ``inspect``); a zstd one only exists decoded in
    the worker, so there the target volume checks what it is given.
    ``check`` raises to stop the stream; it runs before each buffer.
    """
    reader = OvfTarReader(max_total=stores.capacity, require_manifest=require_manifest)
    with ThreadPoolExecutor(1, thread_name_prefix="ovf-check") as checker:
        if zstd:
            target = _CheckedVolume(target, reader, checker)
        try:
            with upload.client_errors(idle_timeout):
                await upload.receive(
                    read, io, target, offset=0, limit=stores.capacity, zstd=zstd,
                    hasher=None, check=check, idle_timeout=idle_timeout, length=length,
                    buffer_size=buffer_size, inspect=None if zstd else reader.feed,
                    offload=lambda: reader.parsing,
                    depth=depth,  # checked in order on the loop, written in any order
                )
        except OutOfRange:
            raise _too_small(storage, stores) from None
    return reader.finish()


def _too_small(storage: StorageDomain, stores: OvfStores) -> StoreTooSmall:
    return StoreTooSmall(f"the OVF tar is larger than the stores of domain {storage.uuid} "
                         f"({stores.capacity} bytes)")
