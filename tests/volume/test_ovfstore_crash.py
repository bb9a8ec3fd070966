"""OVF stores survive SIGKILL at any instant, on file and block domains.

A helper process (``ovfstore_crasher.py``) updates the stores in a loop
and logs each generation and digest before writing it; the test kills it
at a random moment, then reads the stores as a restarted daemon would.
The newest store must be the last committed generation or the one in
flight, whole, and with the bytes the crasher logged for it; and in every
store, tar alone (no record) must find either nothing or a whole archive.
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from contextlib import closing
from pathlib import Path

import pytest
import xxhash

from tests.conftest import LoopDeviceFactory
from tests.volume.ovfstore_util import STORE, make_storage
from volume.blockdomain import open_block_domain
from volume.filedomain import open_file_domain
from volume.ovfstore import RECORD_SIZE, OvfStores, ensure_stores
from volume.sd import StorageDomain, VolumeInfo, open_data

#: kills per domain kind; `make crash-long` (SLUICE_CRASH_TRIALS=500) runs a longer series.
TRIALS = int(os.environ.get("SLUICE_CRASH_TRIALS", "26"))
#: How long the first crasher runs; its updates measure how long one takes.
WARM_UP = 0.5
CRASHER = Path(__file__).with_name("ovfstore_crasher.py")
ROOT = Path(__file__).parents[2]


def read_log(path: Path) -> tuple[dict[int, str], list[int]]:
    """(digest of each begun generation, committed generations) from the log."""
    begun: dict[int, str] = {}
    committed: list[int] = []
    for line in path.read_text().splitlines():
        match line.split():
            case ["begin", gen, digest]:
                # A number is given again only if nothing was committed under it.
                assert int(gen) not in committed, f"committed generation {gen} began again"
                begun[int(gen)] = digest
            case ["commit", gen]:
                committed.append(int(gen))
    return begun, committed


def kill_at_random(args: list[str], delay: float) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen([sys.executable, str(CRASHER), *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env, cwd=ROOT) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        ready = proc.stdout.readline()
        time.sleep(delay)
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert ready == b"ready\n" and alive, proc.stderr.read().decode()


def plain_archive(info: VolumeInfo) -> bytes | None:
    """The archive a reader without the record (hosted-engine's ``dd | tar``)
    takes from the store, None if tar finds no member in it.  The crasher's
    archives are tarfile's: one member, end marker, padding to 10 KiB."""
    with closing(open_data(info, True)) as vol:
        data = bytearray(vol.size() - RECORD_SIZE)
        vol.readinto(0, memoryview(data))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getmembers()
    except tarfile.ReadError:
        return None
    if not members:
        return None
    end = members[-1].offset_data + -(-members[-1].size // 512) * 512 + 1024
    return bytes(data[:-(-end // tarfile.RECORDSIZE) * tarfile.RECORDSIZE])


def check(storage: StorageDomain, log: Path, before: int) -> int:
    """Check the stores after a kill; return the newest committed generation."""
    begun, committed = read_log(log)
    allowed = {max([*committed[-1:], before]), max(begun)}
    stores = OvfStores.open(storage)
    for state in stores.states():
        if state.valid:
            assert state.record is not None
            assert begun[state.record.generation] == state.record.digest
        # Whatever its record says, tar alone finds no archive or a whole one.
        plain = plain_archive(state.volume)
        assert plain is None or xxhash.xxh3_128_hexdigest(plain) in begun.values(), \
            f"store {state.index}: tar reads a torn archive"
    found = stores.newest()
    assert found is not None, [s.to_json() for s in stores.states()]
    state, view = found
    with closing(view):
        data = bytearray(view.size())
        view.readinto(0, memoryview(data))
    assert state.record is not None and state.record.generation in allowed
    assert xxhash.xxh3_128_hexdigest(data) == begun[state.record.generation]
    return state.record.generation


def crash_trials(storage: StorageDomain, location: str, kind: str, log: Path) -> None:
    ensure_stores(storage, 2, STORE)
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    log.write_text("")
    kill_at_random([kind, location, str(log), str(seed)], WARM_UP)
    newest = check(storage, log, 0)
    warm_up = len(read_log(log)[1])
    assert warm_up > 0, "no update completed in the warm-up"
    # Kill anywhere in the first three updates of each run, so every step
    # of an update (and the gaps between them) gets hit across the trials.
    max_delay = 3 * WARM_UP / warm_up
    for trial in range(TRIALS):
        kill_at_random([kind, location, str(log), str(seed + trial + 1)],
                       rng.uniform(0, max_delay))
        fresh = open_file_domain(location) if kind == "file" else open_block_domain([location])
        newest = check(fresh, log, newest)
    begun, committed = read_log(log)
    # Some kills must have landed inside updates, not only between them.
    assert len(begun) > len(committed) > warm_up, (seed, len(begun), len(committed))


@pytest.mark.parametrize("kind", ["file", "block"])
def test_sigkill(kind: str, tmp_path: Path, loop_device: LoopDeviceFactory) -> None:
    storage = make_storage(kind, tmp_path, loop_device)
    crash_trials(storage, storage.location[0], kind, tmp_path / "crasher.log")
