"""The error middleware (stream/middleware.py) on a bare application."""

from __future__ import annotations

import contextlib
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from stream.middleware import errors


async def test_a_client_gone_is_one_log_line(aiohttp_client: Any,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """A handler whose client went away (ConnectionResetError reading the
    body): the exception went back to aiohttp, which logged 'Error handling
    request' with a traceback, once per disconnect."""
    async def reading(request: web.Request) -> web.Response:
        raise ConnectionResetError("Connection lost")

    app = web.Application(middlewares=[errors])
    app.router.add_put("/x", reading)
    client = await aiohttp_client(app)
    with contextlib.suppress(aiohttp.ClientError):  # aborted: nobody is listening
        await client.put("/x", data=b"body")
    lines = [r for r in caplog.records if "client disconnected" in r.getMessage()]
    assert len(lines) == 1 and lines[0].getMessage() == (
        "PUT /x: client disconnected: Connection lost")
    assert not [r.getMessage() for r in caplog.records if r.exc_info]
