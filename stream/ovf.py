"""OVF store streams: receive a tar into a domain's stores, serve it back.

An incoming stream is validated as it arrives (the sans-IO tar reader runs
on every staging buffer before the buffer is written) into the store that
was updated longest ago.  Only a complete, valid stream is committed, and
only then copied into the other stores; any failure leaves the previous
generation as the newest valid one.  One update per domain at a time.
"""

from __future__ import annotations

import asyncio
import io
import logging
import tarfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from volume.base import Volume
from volume.errors import Error, InvalidRequest, NotFound, OutOfRange
from volume.fileobj import VolumeReader
from volume.ovfstore import OvfStores, StoreState, Update
from volume.sd import StorageDomain

from . import upload
from .io import IO as IOExecutor
from .wire.manifest import is_ovf_name
from .wire.tarread import OvfTarReader

log = logging.getLogger(__name__)

Reader = Callable[[], Awaitable[bytes]]


class StoreTooSmall(Error):
    http_status = 413
    code = "ovf-store-too-small"


@dataclass(frozen=True)
class Committed:
    generation: int
    tar_length: int
    digest: str
    entries: int
    replica_errors: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"generation": self.generation, "tar_length": self.tar_length,
                "digest": self.digest, "entries": self.entries,
                "replica_errors": self.replica_errors}


class _Validator:
    """Adapts the tar reader to the upload pipeline's hasher slot: it sees
    every decoded buffer, in the worker thread, before the buffer is written."""

    def __init__(self, reader: OvfTarReader) -> None:
        self.reader = reader

    def update(self, data: memoryview) -> None:
        self.reader.feed(data)


_locks: dict[str, asyncio.Lock] = {}


async def receive(
    read: Reader, io: IOExecutor, storage: StorageDomain, *, zstd: bool, idle_timeout: float,
    buffer_size: int,
) -> Committed:
    lock = _locks.setdefault(storage.uuid, asyncio.Lock())
    async with lock:
        stores = await io.run(OvfStores.open, storage)
        try:
            update: Update = await io.run(stores.begin)
            try:
                reader = OvfTarReader(max_total=stores.capacity)
                try:
                    await upload.receive(
                        read, io, update.volume, offset=0, limit=stores.capacity, zstd=zstd,
                        hasher=_Validator(reader), check=lambda: None,
                        idle_timeout=idle_timeout, buffer_size=buffer_size,
                    )
                except OutOfRange:
                    raise StoreTooSmall(
                        f"the OVF tar is larger than the stores of domain {storage.uuid} "
                        f"({stores.capacity} bytes)"
                    ) from None
                summary = reader.finish()
                record = await io.run(update.commit, summary.tar_length, summary.digest)
            except BaseException:
                await asyncio.shield(io.run(update.abort))
                raise
        finally:
            await io.run(stores.close)
    errors = [str(e) for e in getattr(update, "replica_errors", [])]
    log.info("OVF store of %s: generation %d, %d bytes, %d entries, digest %s%s",
             storage.uuid, record.generation, record.tar_length, len(summary.entries),
             record.digest, f", replica errors: {errors}" if errors else "")
    return Committed(record.generation, record.tar_length, record.digest,
                     len(summary.entries), errors)


def newest(storage: StorageDomain) -> tuple[StoreState, Volume]:
    """The newest verified store (blocking); the volume is the caller's to close."""
    stores = OvfStores.open(storage)
    try:
        found = stores.newest()
    finally:
        stores.close()
    if found is None:
        raise NotFound(f"Storage domain {storage.uuid} has no valid OVF store")
    return found


def states(storage: StorageDomain) -> list[dict[str, Any]]:
    stores = OvfStores.open(storage)
    try:
        return [s.to_json() for s in stores.states()]
    finally:
        stores.close()


def read_member(storage: StorageDomain, name: str) -> bytes:
    """One member of the newest store, found by walking tar headers."""
    if not is_ovf_name(name):
        raise InvalidRequest(f"{name!r} is not an OVF name (<uuid>.ovf)")
    state, volume = newest(storage)
    try:
        assert state.record is not None
        # Read ahead 1 MiB: members are small, so most seeks stay in the buffer.
        raw = io.BufferedReader(VolumeReader(volume, state.record.tar_length), 1 << 20)
        with tarfile.open(fileobj=raw, mode="r:") as tar:
            try:
                member = tar.getmember(name)
            except KeyError:
                raise NotFound(f"{name} is not in the OVF store of {storage.uuid}") from None
            f = tar.extractfile(member)
            if f is None:
                raise NotFound(f"{name} is not a regular file in the OVF store")
            data: bytes = f.read()
            return data
    finally:
        volume.close()
