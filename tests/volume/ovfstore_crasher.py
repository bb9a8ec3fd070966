"""Update a domain's OVF stores forever, to be killed by test_ovfstore_crash.

Usage: ``ovfstore_crasher.py file|block LOCATION LOG SEED``.  Prints
``ready`` once the stores are open.  Before writing each archive it
appends ``begin GENERATION DIGEST`` to LOG, and ``commit GENERATION``
after the commit returns; each line is fsynced, so after a SIGKILL the log
names every archive that may have been committed.
"""

from __future__ import annotations

import io
import os
import random
import sys
import tarfile

import xxhash

from volume.blockdomain import open_block_domain
from volume.filedomain import open_file_domain
from volume.ovfstore import OvfStores
from volume.sd import StorageDomain


def make_tar(members: dict[str, bytes]) -> bytes:
    """A GNU tar of ``members``; here, not in ovfstore_util, so that this
    script starts without importing pytest (a third of a second a run)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


#: tarfile pads archives to 10 KiB records; header and marker take 1.5 KiB.
_TAR_OVERHEAD = 2 * 10240


def random_tar(rng: random.Random, capacity: int) -> bytes:
    """A tar of one member of random size and bytes, at most ``capacity`` long."""
    data = rng.randbytes(rng.randrange(capacity - _TAR_OVERHEAD))
    return make_tar({f"{rng.getrandbits(64):016x}.ovf": data})


def append(fd: int, line: str) -> None:
    os.write(fd, line.encode() + b"\n")
    os.fsync(fd)


def main(kind: str, location: str, log_path: str, seed: str) -> None:
    storage: StorageDomain = (open_file_domain(location) if kind == "file"
                              else open_block_domain([location]))
    stores = OvfStores.open(storage)
    rng = random.Random(int(seed))
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    print("ready", flush=True)
    while True:
        data = random_tar(rng, stores.capacity)
        digest = xxhash.xxh3_128_hexdigest(data)
        update = stores.begin()
        append(fd, f"begin {update.generation} {digest}")
        update.volume.write(0, memoryview(data))
        update.commit(len(data), digest)
        append(fd, f"commit {update.generation}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
