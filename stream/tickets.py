"""Transfer tickets: the authorization of the image API, as in ovirt-imageio.

A ticket is created by the engine (through vdsm) over the control socket and
names one image by ``file://`` URL (its JSON is checked by ``ticketjson``).
The ticket id is the secret in the data URL.  Tickets live in memory only;
a restarted daemon knows none.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from volume.base import Volume
from volume.errors import Conflict, Forbidden, NotFound
from volume.sd import VolumeInfo

log = logging.getLogger(__name__)


class Connection(Protocol):
    """An HTTP connection (aiohttp's protocol): closed once ``transport`` is None."""

    @property
    def transport(self) -> asyncio.BaseTransport | None: ...


class RangeSet:
    """Disjoint byte ranges ``[start, end)``; adding merges what overlaps or touches."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def add(self, start: int, end: int) -> None:
        if start >= end:
            return
        first = bisect.bisect_left(self._ends, start)  # the first ending at or after start
        last = bisect.bisect_right(self._starts, end)  # past the last starting at or before end
        if first < last:
            start = min(start, self._starts[first])
            end = max(end, self._ends[last - 1])
        self._starts[first:last] = [start]
        self._ends[first:last] = [end]

    def total(self, extra: Iterable[tuple[int, int]] = ()) -> int:
        """Bytes covered, with the ``extra`` ranges merged in (not kept)."""
        extra = list(extra)
        if extra:
            merged = RangeSet()
            for start, end in [*zip(self._starts, self._ends, strict=True), *extra]:
                merged.add(start, end)
            return merged.total()
        return sum(self._ends) - sum(self._starts)


@dataclass(eq=False)
class Ticket:
    uuid: str
    size: int
    ops: list[str]
    timeout: int
    url: str
    path: str  # real path, after symlinks, inside a registered domain
    inactivity_timeout: int
    sparse: bool = False
    dirty: bool = False
    transfer_id: str | None = None
    filename: str | None = None
    domain: str | None = None
    #: For a path in a file domain, the domain's directory: the path is opened
    #: only below it, through no symlink (see :func:`volume.open_volume`).
    within: str | None = None
    #: Set for tickets naming a volume by UUIDs: how to open its bytes.
    volume_info: VolumeInfo | None = None
    volume: Volume | None = None
    #: Volumes replaced while requests may still use them (see
    #: :meth:`replace_volume`), closed with the ticket.
    _replaced: list[Volume] = field(default_factory=list)
    expires: float = 0.0
    #: When the last operation completed (monotonic): idle_time counts from it.
    accessed: float = 0.0
    canceled: bool = False
    #: Bytes completed operations covered, merged, as imageio counts them.
    transferred: RangeSet = field(default_factory=RangeSet)
    #: What each running read or write has moved so far, by request: counted
    #: in ``transferred`` too, as imageio does (the engine polls it for its
    #: progress bar, and one upload may be a single request).
    moving: dict[object, tuple[int, int]] = field(default_factory=dict)
    #: Connections that used this ticket; closed ones are dropped when counted.
    _connections: set[Connection] = field(default_factory=set)
    _ongoing: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    open_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self._idle.set()
        self.touch()

    @property
    def log_id(self) -> str:
        return self.transfer_id or f"ticket/{self.uuid[:18]}"

    def touch(self) -> None:
        """Re-arm the expiry and mark activity (after an operation, on OPTIONS)."""
        self.accessed = time.monotonic()
        self.expires = self.accessed + self.timeout

    def extend(self, timeout: int) -> None:
        """Expire ``timeout`` seconds from now, as imageio's PATCH does: the
        ticket's own timeout (re-armed after each operation) and its idle
        time stay."""
        self.expires = time.monotonic() + timeout

    @contextmanager
    def moving_from(self, start: int) -> Iterator[Callable[[int], None]]:
        """A progress callback for a read or write from ``start``: the bytes
        it has moved count in ``transferred`` until it ends."""
        key = object()

        def moved(n: int) -> None:
            self.moving[key] = (start, start + n)
        try:
            yield moved
        finally:
            self.moving.pop(key, None)

    def attach(self, conn: Connection) -> None:
        """Count ``conn`` among the ticket's connections while it is open."""
        if conn not in self._connections:
            self._connections = {c for c in self._connections if c.transport is not None}
            self._connections.add(conn)

    @property
    def connections(self) -> int:
        return sum(1 for c in self._connections if c.transport is not None)

    def renew(self, new: Ticket) -> None:
        """Take the fields of ``new``, a re-add of this ticket for the same
        path (vdsm does it on retries), keeping what is running: transfers
        in flight, the open volume, the counters."""
        for name in ("size", "ops", "timeout", "url", "inactivity_timeout", "sparse", "dirty",
                     "transfer_id", "filename", "volume_info", "within"):
            setattr(self, name, getattr(new, name))
        self.touch()

    def replace_volume(self, volume: Volume) -> None:
        """Serve new requests from ``volume``; requests running on the one
        it replaces keep that until the ticket closes (:meth:`take_volumes`)."""
        if self.volume is not None:
            self._replaced.append(self.volume)
        self.volume = volume

    def take_volumes(self) -> list[Volume]:
        """Every volume the ticket opened, to close: it holds none after."""
        found = [*self._replaced, *([self.volume] if self.volume is not None else [])]
        self._replaced, self.volume = [], None
        return found

    def may(self, op: str) -> bool:
        return op in self.ops or (op == "read" and "write" in self.ops)

    def check(self) -> None:
        """Raise Forbidden if the ticket may no longer be used."""
        if self.canceled:
            raise Forbidden(f"Transfer {self.log_id} was canceled")

    @asynccontextmanager
    async def operation(self) -> AsyncIterator[None]:
        """Track an ongoing request; re-arm the expiry when it completes."""
        self.check()
        self._ongoing += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._ongoing -= 1
            if not self._ongoing:
                self._idle.set()
            self.touch()

    async def cancel(self, wait: float) -> None:
        """Refuse new requests and wait up to ``wait`` seconds for ongoing ones."""
        self.canceled = True
        try:
            await asyncio.wait_for(self._idle.wait(), wait)
        except TimeoutError:
            raise Conflict(
                f"Timeout cancelling transfer {self.log_id}: "
                f"{self._ongoing} operations still running"
            ) from None

    async def idle(self) -> None:
        """Wait until no operation runs."""
        await self._idle.wait()

    @property
    def busy(self) -> bool:
        """Whether operations still run (a canceled ticket's too: a cancel
        waits for them only so long)."""
        return self._ongoing > 0

    def info(self) -> dict[str, Any]:
        now = time.monotonic()
        d: dict[str, Any] = {
            "uuid": self.uuid,
            "size": self.size,
            "ops": self.ops,
            "timeout": self.timeout,
            "url": self.url,
            "inactivity_timeout": self.inactivity_timeout,
            "sparse": self.sparse,
            "dirty": self.dirty,
            "active": self._ongoing > 0,
            "canceled": self.canceled,
            "connections": self.connections,
            "expires": int(self.expires),
            "idle_time": 0 if self._ongoing else int(now - self.accessed),
        }
        if len(self.ops) == 1:
            d["transferred"] = self.transferred.total(self.moving.values())
        if self.volume_info is not None:
            info = self.volume_info
            d.update(sd_id=info.sd_uuid, img_id=info.img_uuid, vol_id=info.vol_uuid)
        for key in ("transfer_id", "filename"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d


class Authorizer:
    def __init__(self) -> None:
        self._tickets: dict[str, Ticket] = {}
        #: Volumes (sd, img, vol) being deleted: no new ticket or job may use them.
        self.deleting: set[tuple[str, str, str]] = set()

    def on_volume(self, info: VolumeInfo, real_path: str,
                  writers: bool = False) -> Ticket | None:
        """A ticket that may still use the volume (by UUIDs, or by the real
        path of a whole-file volume): not canceled, or canceled with its
        operations still running; with ``writers``, one that may write."""
        for t in self._tickets.values():
            v = t.volume_info
            if (not t.canceled or t.busy) and (not writers or t.may("write")) and (
                    (v is not None and v.key == info.key)
                    or (info.length is None and t.path == real_path)):
                return t
        return None

    def check_not_deleting(self, info: VolumeInfo) -> None:
        """Conflict if ``info`` is being deleted."""
        if info.key in self.deleting:
            raise Conflict(f"volume {info.img_uuid}/{info.vol_uuid} of storage domain "
                           f"{info.sd_uuid} is being deleted")

    def add(self, ticket: Ticket) -> Ticket | None:
        """Add or replace; returns the replaced ticket, if any."""
        old = self._tickets.get(ticket.uuid)
        self._tickets[ticket.uuid] = ticket
        return old

    def peek(self, ticket_id: str) -> Ticket | None:
        """The ticket under ``ticket_id``, whatever its state, or None."""
        return self._tickets.get(ticket_id)

    def get(self, ticket_id: str) -> Ticket:
        try:
            return self._tickets[ticket_id]
        except KeyError:
            raise NotFound(f"No such ticket {ticket_id!r}") from None

    def authorize(self, ticket_id: str, op: str) -> Ticket:
        ticket = self._tickets.get(ticket_id)
        if ticket is None:
            raise Forbidden(f"No such ticket {ticket_id}")
        if ticket.canceled:
            raise Forbidden(f"Ticket {ticket_id} was canceled")
        if ticket.expires < time.monotonic() and not ticket._ongoing:
            raise Forbidden(f"Ticket {ticket_id} expired")
        if not ticket.may(op):
            raise Forbidden(f"Ticket {ticket_id} forbids {op}")
        return ticket

    def discard(self, ticket: Ticket) -> None:
        """Remove ``ticket`` if it is still the one under its id (a ticket
        re-added under the same id meanwhile stays)."""
        if self._tickets.get(ticket.uuid) is ticket:
            del self._tickets[ticket.uuid]

    def all(self) -> list[Ticket]:
        return list(self._tickets.values())
