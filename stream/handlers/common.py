"""Small helpers the handlers share."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from volume import open_volume
from volume.base import Volume
from volume.errors import Error, InvalidRequest
from volume.sd import open_data

from ..errors import BodyTooLarge, TooSlow, UnsupportedEncoding, UnsupportedTransferCoding
from ..io import IO
from ..state import CONFIG
from ..tickets import Ticket

#: Control messages and PATCH bodies are tiny; anything bigger is a mistake.
MAX_JSON = 64 * 1024


def flag_param(request: web.Request, name: str, default: bool) -> bool:
    value = request.query.get(name)
    if value is None:
        return default
    if value not in ("y", "n"):
        raise InvalidRequest(f"Invalid value {value!r} for {name!r}, expecting 'y' or 'n'")
    return value == "y"


def body_coding(request: web.Request) -> tuple[bool, bool]:
    """Whether a data body is zstd-encoded, and whether it is chunked;
    any other coding is refused.

    Every line of each header counts: ``headers.get`` sees the first only,
    and two ``Content-Encoding: zstd`` lines mean a body compressed twice,
    which decoded once is not the data.  aiohttp removes the chunking and
    nothing else, so ``Transfer-Encoding: gzip, chunked`` would reach the
    volume still gzipped.
    """
    content = [c for c in _codings(request, "Content-Encoding") if c != "identity"]
    if content not in ([], ["zstd"]):
        raise UnsupportedEncoding(
            f"Content-Encoding {', '.join(content)!r} is not supported; use zstd, once")
    transfer = _codings(request, "Transfer-Encoding")
    if transfer not in ([], ["chunked"]):
        raise UnsupportedTransferCoding(
            f"Transfer-Encoding {', '.join(transfer)!r} is not supported; use chunked alone")
    return bool(content), bool(transfer)


def _codings(request: web.Request, header: str) -> list[str]:
    return [c.strip().lower() for line in request.headers.getall(header, ())
            for c in line.split(",") if c.strip()]


async def read_json(request: web.Request, within: float | None = None) -> dict[str, Any]:
    """Read a small JSON object body (bounded, never a data stream) within
    ``within`` seconds (default: the daemon's ``inactivity_timeout``).

    aiohttp has no timer on a body: a client that stops sending one would
    hold its connection open forever (imageio's socket timeout ends it).
    """
    if request.content_length is not None and request.content_length > MAX_JSON:
        raise BodyTooLarge(f"JSON body larger than {MAX_JSON} bytes")
    if within is None:
        within = request.app[CONFIG].transfer.inactivity_timeout
    # read(n) returns what has arrived; a body may come in several packets.
    raw = b""
    try:
        async with asyncio.timeout(within):
            while len(raw) <= MAX_JSON and (
                    part := await request.content.read(MAX_JSON + 1 - len(raw))):
                raw += part
    except TimeoutError:
        raise TooSlow(f"The JSON body did not arrive within {within:g} s") from None
    if len(raw) > MAX_JSON:
        raise BodyTooLarge(f"JSON body larger than {MAX_JSON} bytes")
    try:
        msg = json.loads(raw)
    except ValueError as e:
        raise InvalidRequest(f"Invalid JSON message: {e}") from None
    except RecursionError:
        # "[[[[..." nested deeper than the parser recurses; fits in MAX_JSON.
        raise InvalidRequest("Invalid JSON message: nested too deeply") from None
    if not isinstance(msg, dict):
        raise InvalidRequest("Invalid JSON message: expecting an object")
    return msg


async def ticket_volume(io: IO, ticket: Ticket) -> Volume:
    """The ticket's volume, opened once and shared by its connections.

    A re-add (:meth:`Ticket.renew`) that granted write to a ticket whose
    volume is open read-only has it opened again, read-write; should that
    fail (an immutable file), reads go on through the read-only one."""
    async with ticket.open_lock:
        volume = ticket.volume
        if volume is None or (volume.readonly and ticket.may("write")):
            readonly = not ticket.may("write")
            try:
                if ticket.volume_info is not None:
                    opened = await io.run(open_data, ticket.volume_info, readonly)
                else:
                    opened = await io.run(open_volume, ticket.path, readonly=readonly,
                                          within=ticket.within)
            except Error:
                if volume is None:
                    raise
                return volume  # writes are refused by it, as before the re-add
            ticket.replace_volume(opened)
            volume = opened
        return volume
