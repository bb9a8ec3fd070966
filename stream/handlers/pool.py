"""The pool map and host stats on the control API."""

from __future__ import annotations

from aiohttp import web

from ..auth import ENGINE
from ..pool import parse
from ..state import POOL
from .common import read_json

routes = web.RouteTableDef()


@routes.put("/pool", name=ENGINE + "put-pool")
async def put_pool(request: web.Request) -> web.Response:
    mgr = request.app[POOL]
    changed = await mgr.apply(parse(await read_json(request)))
    body = mgr.current.to_json()
    body["changed"] = changed
    return web.json_response(body)


@routes.get("/pool", name=ENGINE + "get-pool")
async def get_pool(request: web.Request) -> web.Response:
    return web.json_response(request.app[POOL].current.to_json())


@routes.get("/stats", name=ENGINE + "stats")
async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[POOL].stats())
