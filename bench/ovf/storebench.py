"""Issue "OVF stores": the daemon receives one store of N OVFs of 20 KiB.

The tar is the engine's layout (``stream.wire.tarplan``: ``info.json`` with
the manifest, the OVFs, ``metadata.json``), written once to /dev/shm.  Each
round PUTs it to ``/domains/{sd}/ovf-store`` with curl and the engine's
bearer token, then PUTs the same file to an image ticket of the same size
on the same daemon with the same curl.  Both answers come after the data is
durable: the OVF store's once it is verified and committed (the copy into
the domain's other store follows, as the answer's ``copies_pending`` says;
the check through ovf-store/info waits for it), the image's after its fsync.
"""

from __future__ import annotations

import time
from pathlib import Path

from .. import MB, BenchError, MiB, log
from ..runner import describe, round_failed
from ..workspace import SHM, remove, settled
from . import OVF_SIZE, ovfgen
from .daemon import Daemon
from .measure import MemRow, Metered, check_image, image_put, put_json

OVF_ROW = "sluice/ovf-store/http/curl"
IMAGE_ROW = "sluice/upload/http/curl"


def _row(name: str, size: int) -> MemRow:
    peer, direction, transport, client = name.split("/")
    return MemRow(peer, direction, transport, client, size=size)


def _put_store(d: Daemon, tar: Path, size: int, digest: str, work: Path,
               row: MemRow, timed: bool = True) -> None:
    """One PUT of the store; checks the answer and the store the daemon
    reads back.  Not ``timed``: only its memory figures go into ``row``."""
    header = work / "auth.header"
    if not header.exists():
        header.write_text(d.auth_header() + "\n")
        header.chmod(0o600)
    metered = Metered(d.proc)
    seconds, answer = put_json(tar, f"{d.url}/domains/{d.sd}/ovf-store", size, header,
                               work / "answer.json")
    reading = metered.done(seconds)
    if (answer.get("tar_length"), answer.get("digest")) != (size, digest):
        raise BenchError(f"the daemon committed {answer}, sent {size} bytes with {digest}")
    newest = d.newest_store(d.sd)
    if newest is None or (newest["generation"], newest["digest"], newest["tar_length"]) != (
            answer["generation"], digest, size):
        raise BenchError(f"ovf-store/info has {newest} as the newest store, "
                         f"committed {answer}")
    if not timed:
        reading.record_memory(row)
        return
    reading.record(row)
    row.verified = True
    row.extra = {"generation": answer["generation"], "entries": answer.get("entries"),
                 "copies_pending": answer.get("copies_pending")}


def _put_image(d: Daemon, tar: Path, size: int, digest: str, row: MemRow,
               timed: bool = True) -> None:
    with d.image_ticket(size) as (url, path):
        metered = Metered(d.proc)
        reading = metered.done(image_put(tar, url, size))
        check_image(path, size, digest)
    if not timed:
        reading.record_memory(row)
        return
    reading.record(row)
    row.verified = True


def _make_tar(path: Path, sd: str, count: int, seed: str) -> tuple[int, str]:
    plan = ovfgen.store_plan(sd, ovfgen.specs(count, [sd], OVF_SIZE, seed), time.time())
    return plan.total_size, ovfgen.write_tar(path, plan)


def run(d: Daemon, work: Path, count: int, rounds: int) -> tuple[list[MemRow], dict[str, int]]:
    """The store rows; a failing row records its error and skips its later
    rounds, whatever the error: the report is worth more than any one row."""
    tar = SHM / f"{work.name}-store.tar"
    try:
        start = time.monotonic()
        size, digest = _make_tar(tar, d.sd, count, "store")
        log(f"store: tar of {count} OVFs, {size / MB:.1f} MB, made in "
            f"{time.monotonic() - start:.1f} s")
        rows = [_row(OVF_ROW, size), _row(IMAGE_ROW, size)]
        # The daemon's first OVF and image requests, at full size: imports,
        # buffers and threads, and the first write over each store's
        # preallocated area (the copy after the answer writes the second).
        # Measured: the first PUT of each kind took 0.26-0.30 s, later ones
        # 0.19-0.22 s (store) and 0.14-0.17 s (image).  Stores are rewritten
        # on every engine pass: their time is the steady state's.  Their
        # memory is the cold daemon's, the worst case: it counts.
        try:
            with settled():
                _put_store(d, tar, size, digest, work, rows[0], timed=False)
            with settled():
                _put_image(d, tar, size, digest, rows[1], timed=False)
        except Exception as e:
            for row in rows:
                row.error = f"warm-up: {describe(e)}"
        for i in range(rounds):
            for row in rows:
                if row.error is not None:
                    continue
                try:
                    with settled():
                        if row.name == OVF_ROW:
                            _put_store(d, tar, size, digest, work, row)
                        else:
                            _put_image(d, tar, size, digest, row)
                except Exception as e:
                    round_failed(row, i, e)
                    continue
                log(f"{row.name} round {i + 1}/{rounds}: {size / row.seconds[-1] / MB:.1f} "
                    f"MB/s, daemon RSS +{row.rss_growth[-1] / MiB:.1f} MiB "
                    f"(peak {row.peak_rss / MiB:.0f} MiB)")
        return rows, {"ovfs": count, "ovf_size": OVF_SIZE, "tar_bytes": size,
                      "rounds": rounds, "warmup_puts": 1}  # of each kind, full size
    finally:
        remove(tar)
