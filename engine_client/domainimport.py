"""``sluice-engine domain import SD``: recover a domain's VMs and templates
from its OVF store, as oVirt does when a data domain is imported or
attached (ovirt-storage.md §1.8).  A domain alone is enough to get them
back: this is what the stores are for.

1. The newest valid store is read from a host that serves the domain
   (``GET /domains/{sd}/ovf-store``) into a temporary file of the state
   directory, checked as it streams by the same sans-IO reader the daemon
   uses (structure, and every entry against the manifest when there is
   one); its length and xxh3-128 must be what the host's commit record
   says.  A host that fails, or sends a bad store, gives way to the next.
2. Every ``<uuid>.ovf`` is parsed.  As oVirt does, external VMs are left
   out and an OVF that cannot be used is skipped with the reason (not XML,
   no VM UUID, a name that is not its UUID, a disk on a domain the cache
   does not know); ``info.json`` and ``metadata.json`` are not entities.
   The skipped ones but external VMs stay in the domain's store, as oVirt
   keeps its unregistered entities there, until an import takes them.
   An entity the cache knows already is left as it is (the cache is newer
   than any store), unless this OVF's generation is ahead of the cache's:
   a copy taken a moment ago from another domain's older store.
3. The others are added, a batch per transaction, as ``vm import`` adds
   them (a disk without a ``StorageId`` is placed on this domain).  They
   come in Down, whatever the store's ``metadata.json`` says (reported as
   ``stored_status``): nothing runs them on this engine yet.  Their
   generation is ahead of their cached OVF, so the next updater pass
   writes them into the stores of their domains again, as oVirt marks the
   found stores outdated.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from stream.wire.manifest import is_ovf_name
from stream.wire.poolmap import NOT_IN_POOL
from stream.wire.tarread import BadTar, Entry, OvfTarReader, Summary

from . import decide, report
from .cache import Cache
from .config import Config
from .entities import ImportItem
from .errors import EngineError, HostError, InvalidInput
from .hostapi import Clients, HostClient, StoreDownload
from .ovf import EXTERNAL_ORIGIN, Ovf, canonical_uuid, parse

#: Entities added per cache transaction: a crash loses at most one batch,
#: and a batch of 20 KiB OVFs holds 10 MiB in memory.
BATCH = 500
#: A store larger than this is refused before it is read (oVirt's are 128 MiB).
MAX_STORE = 4 << 30


class External(InvalidInput):
    """An external VM: oVirt neither imports nor stores those."""


@dataclass(frozen=True)
class Found:
    """One entity of the store and what became of it."""

    uuid: str
    name: str | None
    kind: str | None
    outcome: str  # "added", "updated", "known" or "skipped"
    reason: str | None = None
    stored_status: int | None = None


@dataclass
class ImportReport:
    sd_uuid: str
    host: str
    generation: int
    digest: str
    tar_length: int
    entities: list[Found] = field(default_factory=list)
    #: Hosts tried before ``host``, and why each failed.
    failed_hosts: list[str] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(f.outcome == outcome for f in self.entities)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self),
                **{k: self.count(k) for k in ("added", "updated", "known", "skipped")}}


def run(cache: Cache, cfg: Config, args: argparse.Namespace) -> int:
    result = asyncio.run(import_domain(cache, cfg, args.uuid, args.host))
    report.out(args, result.to_json(), lambda: text(result))
    return 0


def text(r: ImportReport) -> str:
    lines = [f"domain {r.sd_uuid}: store generation {r.generation} ({r.tar_length} bytes) "
             f"read from host {r.host}: {r.count('added')} added, {r.count('updated')} "
             f"updated, {r.count('known')} already known, {r.count('skipped')} skipped"]
    lines += [f"  skipped {f.uuid}: {f.reason}" for f in r.entities if f.outcome == "skipped"]
    lines += [f"  host {failure}" for failure in r.failed_hosts]
    return "\n".join(lines)


async def import_domain(cache: Cache, cfg: Config, sd_uuid: str,
                        only_host: str | None = None) -> ImportReport:
    sd = canonical_uuid(sd_uuid, "storage domain")
    cache.domain(sd)  # NotFound for a domain the cache does not know
    order = decide.host_order(sd, cache.hosts(), cache.host_reports())
    if only_host is not None:
        order = [h for h in order if h.name == only_host]
    if not order:
        raise InvalidInput(f"no host{' ' + only_host if only_host else ''} serves domain "
                           f"{sd}; add one with 'sluice-engine host add ... --domain {sd}'")
    clients = Clients(cfg.http)
    failures: list[str] = []
    unmapped = False  # a host has no map with the domain: added, never pushed
    try:
        for host in order:
            with tempfile.TemporaryFile(dir=cfg.state_dir) as spool:
                try:
                    got, summary = await _download(clients(host), sd, spool)
                except (HostError, BadTar) as e:
                    failures.append(f"{host.name}: {e}" if isinstance(e, BadTar) else
                                    str(e).removeprefix("host "))
                    unmapped |= isinstance(e, HostError) and e.code == NOT_IN_POOL
                    continue
                except OSError as e:  # the spool in the state directory: a full disk, say
                    raise EngineError(f"cannot keep the OVF store of domain {sd} in "
                                      f"{cfg.state_dir}: {e.strerror or e}") from None
                result = ImportReport(sd, host.name, got.generation, got.digest,
                                      got.length, failed_hosts=failures)
                result.entities = await asyncio.to_thread(_import, cache, cfg, sd, spool,
                                                          summary)
                await asyncio.to_thread(
                    cache.store_imported, sd, got.generation, got.digest, got.length,
                    host.name, [f.uuid for f in result.entities if f.outcome != "skipped"])
                return result
    finally:
        await clients.close()
    hint = ("; the domain is not in a host's pool map yet: push it with "
            "'sluice-engine pool push' and import again" if unmapped else "")
    raise EngineError(f"no host gave a valid OVF store of domain {sd}: "
                      + "; ".join(failures) + hint)


async def _download(client: HostClient, sd: str, spool: IO[bytes]
                    ) -> tuple[StoreDownload, Summary]:
    """Read the store into ``spool``, checking it as it comes."""
    reader: OvfTarReader | None = None

    async def sink(chunk: bytes) -> None:
        nonlocal reader
        if reader is None:
            reader = OvfTarReader(max_total=MAX_STORE, committed=True)
        try:
            reader.feed(chunk)
        except ValueError as e:  # BadTar is one; anything else from the reader too
            raise BadTar(f"the store of domain {sd} is not a valid OVF store: {e}") from None
        await asyncio.to_thread(spool.write, chunk)

    got = await client.read_ovf_store(sd, sink, MAX_STORE)
    await asyncio.to_thread(spool.flush)  # read back with pread, past Python's buffer
    name = client.host.name
    if got.received != got.length:
        raise HostError(name, f"sent {got.received} bytes of a {got.length} byte store "
                        f"of domain {sd}", code="incomplete")
    if reader is None:
        raise HostError(name, f"sent an empty store of domain {sd}", code="bad-answer")
    try:
        summary = reader.finish()
    except ValueError as e:
        raise BadTar(f"the store of domain {sd} is not a valid OVF store: {e}") from None
    if (summary.tar_length, summary.digest) != (got.length, got.digest):
        raise HostError(name, f"sent {summary.tar_length} bytes with xxh3_128 "
                        f"{summary.digest} for domain {sd}, its record says {got.length} "
                        f"bytes with {got.digest}", code="digest-mismatch")
    return got, summary


def _import(cache: Cache, cfg: Config, sd: str, spool: IO[bytes],
            summary: Summary) -> list[Found]:
    """Steps 2 and 3 (blocking: cache and file)."""
    known_domains = {d.uuid for d in cache.domains()}
    known = {e.uuid: e.db_generation for e in cache.entities()}
    found: list[Found] = []
    batch: list[tuple[ImportItem, int | None]] = []
    refused: list[tuple[Found, bytes]] = []

    def add(items: list[tuple[ImportItem, int | None]]) -> None:
        unplaced = {d.disk_uuid: sd for item, _ in items for d in item.ovf.disks
                    if d.sd_uuid is None}
        cache.import_entities([item for item, _ in items], disk_domains=unplaced)
        found.extend(Found(i.ovf.uuid, i.ovf.name, i.ovf.kind,
                           "updated" if i.ovf.uuid in known else "added", None, st)
                     for i, st in items)

    def flush() -> None:
        try:
            add(batch)
        except InvalidInput:  # the cache refused one of them: find which, add the rest
            for one in batch:
                try:
                    add([one])
                except InvalidInput as e:
                    item, status = one
                    refusal = Found(item.ovf.uuid, item.ovf.name, item.ovf.kind,
                                    "skipped", str(e), status)
                    found.append(refusal)
                    refused.append((refusal, item.data))
        batch.clear()

    held: list[tuple[str, bytes, str]] = []
    for entry, data in _ovfs(spool, summary.entries):
        uuid = entry.name.removesuffix(".ovf")
        status = summary.vm_status.get(uuid)
        try:
            ovf = _usable(parse(data, entry.name), uuid, known_domains, cfg.max_ovf_size,
                          len(data))
        except InvalidInput as e:
            found.append(Found(uuid, None, None, "skipped", str(e), status))
            if not isinstance(e, External):
                held.append((uuid, data, str(e)))
            continue
        if ovf.uuid in known and (ovf.generation or 0) <= known[ovf.uuid]:
            found.append(Found(uuid, ovf.name, ovf.kind, "known", None, status))
            continue
        batch.append((ImportItem(entry.name, ovf, data), status))
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()
    # The rest of the refused (not external VMs: oVirt never stores those)
    # stay in this domain's store, as oVirt keeps its unregistered entities.
    held += [(f.uuid, data, f.reason or "") for f, data in refused]
    if held:
        cache.hold_ovfs(sd, held)
    return found


def _ovfs(spool: IO[bytes], entries: tuple[Entry, ...]) -> Iterator[tuple[Entry, bytes]]:
    fd = spool.fileno()
    for entry in entries:
        if is_ovf_name(entry.name):
            yield entry, os.pread(fd, entry.size, entry.offset)


def _usable(ovf: Ovf, uuid: str, domains: set[str], max_size: int, size: int) -> Ovf:
    """``ovf`` if it may be added, else InvalidInput saying why not."""
    if size > max_size:
        raise InvalidInput(f"{size} bytes, over max_ovf_size ({max_size})")
    if ovf.uuid != uuid:
        raise InvalidInput(f"its file is named for {uuid}, but it describes {ovf.kind} "
                           f"{ovf.uuid}")
    if ovf.origin == EXTERNAL_ORIGIN:
        raise External(f"{ovf.kind} {ovf.name} is an external VM, which oVirt never "
                           "imports from a store")
    unknown = sorted({d.sd_uuid for d in ovf.disks if d.sd_uuid and d.sd_uuid not in domains})
    if unknown:
        raise InvalidInput(f"{ovf.kind} {ovf.name} has disks on domains this engine does "
                           f"not know: {', '.join(unknown)}; add them and import again")
    return ovf
