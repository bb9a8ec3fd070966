"""The disk's limits, measured with dd and O_DIRECT on the work dir's disk.

Write: the source image (in /dev/shm) into a new file, 16 MiB blocks,
oflag=direct conv=fsync, the way the servers write a new image.  Read:
the on-disk copy that downloads serve, iflag=direct.  Buffered write: the
same without O_DIRECT and fsync, the ceiling of a download into a file.
No server is involved, so these rows have no CPU or RSS figures.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable
from functools import partial

from . import BenchError
from .report import Row
from .runner import Job, Trial
from .workspace import Workspace, drop_cached, remove

BLOCK = "16M"


def dd(*args: str) -> float:
    """Run dd; return its wall time in seconds."""
    start = time.perf_counter()
    try:
        subprocess.run(["dd", f"bs={BLOCK}", "status=none", *args], check=True,
                       capture_output=True, timeout=3600)
    except subprocess.CalledProcessError as e:
        raise BenchError(f"dd failed: {e.stderr.decode(errors='replace').strip()}") from e
    return time.perf_counter() - start


def write_trial(ws: Workspace, flags: tuple[str, ...] = ()) -> Trial:
    dest = ws.root / f"dd-{uuid.uuid4().hex[:8]}.img"
    return Trial(run=lambda: dd(f"if={ws.image}", f"of={dest}", *flags), result=dest,
                 cleanup=[lambda: remove(dest)])


def read_trial(ws: Workspace) -> Trial:
    drop_cached(ws.source)
    return Trial(run=lambda: dd(f"if={ws.source}", "of=/dev/null", "iflag=direct"), result=None)


#: (direction, transport) -> one round.  The buffered write is what a
#: client downloading into a file (curl -o) can reach at most: page cache,
#: no fsync in the timed part.
TRIALS: dict[tuple[str, str], Callable[[Workspace], Trial]] = {
    ("write", "odirect"): partial(write_trial, flags=("oflag=direct", "conv=fsync")),
    ("read", "odirect"): read_trial,
    ("write", "buffered"): write_trial,
}


def limit_jobs(ws: Workspace, selected: Callable[[str], bool]) -> list[Job]:
    rows = [(Row("limits", direction, transport, "dd"), make)
            for (direction, transport), make in TRIALS.items()]
    return [Job(row, None, partial(make, ws)) for row, make in rows if selected(row.name)]
