"""One OVF updater pass at a time per engine cache, across processes.

``sluice-engine run``, an ``ovf update --once`` and a domain flow's store
refresh may run at once on one state directory.  Each pass reads the
stores that are outdated and pushes them: two passes at once pushed the
same store twice (a second generation of the same content, and on a slow
host a 409 from the daemon's own domain lock, reported as a failure).
oVirt's pool phase takes an exclusive ``OVF_UPDATE`` lock for the same
reason.  A pass waits for the one under way, then finds what it left.

Each domain has a flow lock too (:func:`hold_flow`): one maintenance,
activate or detach at a time, and no status set by hand under one; a
second is refused rather than waited for.

Each is an ``flock`` on a file in the state directory: released by the
kernel when its process dies, so a killed updater or flow never leaves it
held.  It is only ever tried, never waited for in a thread, so neither
the event loop nor the updater's worker blocks on it.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os

from .errors import EngineError, InvalidInput

log = logging.getLogger(__name__)

NAME = "ovf-update.lock"
#: Seconds between tries while another pass holds the lock.
POLL = 0.1


def try_lock(path: str, what: str = "the OVF updater's lock") -> int | None:
    """An open descriptor holding the lock of ``path`` (created if need
    be), or None if another holds it.  Domain flows lock this way too."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:  # a state directory gone or read-only: one sentence
        raise EngineError(f"cannot open {what} {path}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


async def acquire(state_dir: str) -> int:
    """Wait for the lock of ``state_dir``'s updater; the descriptor to
    :func:`release`."""
    path = os.path.join(state_dir, NAME)
    said = False
    while (fd := try_lock(path)) is None:
        if not said:
            log.info("another OVF update pass is running on %s; waiting for it", state_dir)
            said = True
        await asyncio.sleep(POLL)
    return fd


def hold_flow(state_dir: str, sd_uuid: str) -> int:
    """The flow lock of domain ``sd_uuid``, held (:func:`release` it): one
    maintenance, activate or detach at a time per domain, and no status
    set by hand under one.  Taken on the caller's thread, event loop
    included (a non-blocking flock on a local file), so that a cancel
    cannot strand the descriptor in a worker.  InvalidInput while another
    process (or flow) holds it."""
    fd = try_lock(os.path.join(state_dir, f"flow-{sd_uuid}.lock"), "the domain's flow lock")
    if fd is None:
        raise InvalidInput(f"a maintenance, activate or detach of storage domain {sd_uuid} "
                           "is running; wait for it to end")
    return fd


def release(fd: int) -> None:
    os.close(fd)  # the lock goes with the last descriptor of its open file
