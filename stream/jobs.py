"""Background jobs of the control API (copies), kept in memory.

A job runs as one asyncio task; ``GET /jobs/{id}`` reads its progress and
``DELETE /jobs/{id}`` cancels it.  Finished jobs stay visible for a while so
the engine can read how they ended.  At most ``MAX_RUNNING`` jobs run at
once (each holds several I/O buffers); the others wait ``pending``.  Two
active jobs never write the same volume.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from volume.errors import Conflict, Error, NotFound

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Finished jobs are forgotten after this long (the engine polls far more often).
KEEP_FINISHED = 3600.0
#: Jobs running at once; more wait their turn.  A copy keeps about four
#: buffers and two I/O workers busy.
MAX_RUNNING = 4


@dataclass(eq=False)
class Job:
    id: str
    kind: str
    description: dict[str, Any]
    state: str = "pending"  # pending, running, verifying, done, failed, canceled
    bytes_total: int = 0
    bytes_done: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    error: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    #: The volumes the job writes and reads, (sd, img, vol): an active job
    #: writing a volume excludes any other active job using it.
    writes: tuple[str, str, str] | None = None
    reads: tuple[str, str, str] | None = None
    #: The real paths of those that are whole files (what a path ticket names).
    paths: tuple[str, ...] = ()
    task: asyncio.Task[None] | None = None
    #: Why the job was stopped from outside (see stop), if it was.
    stopped: str | None = None

    def to_json(self) -> dict[str, Any]:
        elapsed = (self.finished or time.monotonic()) - self.started
        return {
            "id": self.id, "kind": self.kind, "state": self.state,
            "bytes_done": self.bytes_done, "bytes_total": self.bytes_total,
            "elapsed": round(elapsed, 3),
            "rate": int(self.bytes_done / elapsed) if elapsed > 0 else 0,
            "error": self.error, "result": self.result, **self.description,
        }

    @property
    def active(self) -> bool:
        return self.state in ("pending", "running", "verifying")

    def stop(self, reason: str) -> None:
        """Fail the job, saying why: what it uses went away (not a cancel
        by request)."""
        if self.task is not None and not self.task.done() and self.stopped is None:
            self.stopped = reason
            self.task.cancel()


async def last_step(step: Awaitable[T]) -> T:
    """Await a job's last step (marking a verified copy complete) to its end.

    A cancel or stop that arrives meanwhile came too late: the step runs
    in an I/O worker that cannot be interrupted, and a job reported
    canceled while that worker still marks its volume complete would free
    the volume for another job, whose "incomplete" mark the late one could
    overwrite.  So the cancel is absorbed and the job ends done.
    """
    task = asyncio.ensure_future(step)
    absorbed = 0
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise  # the step itself was canceled (the loop is closing)
            absorbed += 1
    current = asyncio.current_task()
    if current is not None:
        for _ in range(absorbed):
            current.uncancel()
    return result


class Jobs:
    def __init__(self, max_running: int = MAX_RUNNING) -> None:
        self._jobs: dict[str, Job] = {}
        self._slots = asyncio.Semaphore(max_running)

    def start(self, job: Job, run: Callable[[Job], Awaitable[None]]) -> Job:
        self._expire()
        old = self._jobs.get(job.id)
        if old is not None and old.active:
            raise Conflict(f"job {job.id} is still {old.state}")
        for other in self._jobs.values():
            if not other.active:
                continue
            for mine, theirs in ((job.writes, other.writes), (job.writes, other.reads),
                                 (job.reads, other.writes)):
                if mine is not None and mine == theirs:
                    raise Conflict(f"volume {'/'.join(mine)} is in use by job {other.id}, "
                                   f"still {other.state}")
        self._jobs[job.id] = job
        job.task = asyncio.create_task(self._run(job, run), name=f"job-{job.id}")
        return job

    async def _run(self, job: Job, run: Callable[[Job], Awaitable[None]]) -> None:
        try:
            async with self._slots:
                job.state = "running"
                job.started = time.monotonic()
                await run(job)
            job.state = "done"
        except asyncio.CancelledError:
            if job.stopped is not None:
                job.state, job.error = "failed", job.stopped
                log.warning("job %s failed: %s", job.id, job.stopped)
            else:
                job.state = "canceled"
                job.error = "canceled by request"
        except Error as e:
            job.state, job.error = "failed", e.detail
            log.warning("job %s failed: %s", job.id, e.detail)
        except Exception as e:
            job.state, job.error = "failed", f"internal error: {type(e).__name__}, check logs"
            log.exception("job %s failed", job.id)
        finally:
            job.finished = time.monotonic()
            log.info("job %s %s: %d/%d bytes", job.id, job.state, job.bytes_done, job.bytes_total)

    def using(self, key: tuple[str, str, str] | None = None,
              path: str | None = None) -> Job | None:
        """An active job reading or writing volume ``key`` (sd, img, vol), or
        the whole file at real path ``path``."""
        return next((j for j in self._jobs.values() if j.active and (
            (key is not None and key in (j.reads, j.writes))
            or (path is not None and path in j.paths))), None)

    def get(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFound(f"No such job {job_id}") from None

    async def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.task is not None and not job.task.done():
            job.task.cancel()
            await asyncio.gather(job.task, return_exceptions=True)
        return job

    async def close(self) -> None:
        for job in list(self._jobs.values()):
            if job.task is not None and not job.task.done():
                job.task.cancel()
                await asyncio.gather(job.task, return_exceptions=True)

    def _expire(self) -> None:
        now = time.monotonic()
        for job_id, job in list(self._jobs.items()):
            if job.finished is not None and now - job.finished > KEEP_FINISHED:
                del self._jobs[job_id]
