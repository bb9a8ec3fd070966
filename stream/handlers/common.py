"""Small helpers the handlers share."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from volume import open_volume
from volume.base import Volume
from volume.errors import InvalidRequest
from volume.sd import open_data

from ..errors import BodyTooLarge
from ..io import IO
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


async def read_json(request: web.Request) -> dict[str, Any]:
    """Read a small JSON object body (bounded, never a data stream)."""
    if request.content_length is not None and request.content_length > MAX_JSON:
        raise BodyTooLarge(f"JSON body larger than {MAX_JSON} bytes")
    # read(n) returns what has arrived; a body may come in several packets.
    raw = b""
    while len(raw) <= MAX_JSON and (part := await request.content.read(MAX_JSON + 1 - len(raw))):
        raw += part
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
    """The ticket's volume, opened once and shared by its connections."""
    async with ticket.open_lock:
        volume = ticket.volume
        if volume is None:
            readonly = not ticket.may("write")
            if ticket.volume_info is not None:
                volume = await io.run(open_data, ticket.volume_info, readonly)
            else:
                volume = await io.run(open_volume, ticket.path, readonly=readonly,
                                      within=ticket.within)
            ticket.volume = volume
        return volume
