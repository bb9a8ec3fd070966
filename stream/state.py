"""Typed keys of the application state shared by the handlers."""

from __future__ import annotations

from aiohttp import web

from .config import Config
from .io import IO
from .jobs import Jobs
from .ovf import Updates
from .poolmgr import PoolManager
from .tickets import Authorizer

CONFIG = web.AppKey("config", Config)
IO_KEY = web.AppKey("io", IO)
AUTH = web.AppKey("auth", Authorizer)
POOL = web.AppKey("pool", PoolManager)
JOBS = web.AppKey("jobs", Jobs)
OVF_UPDATES = web.AppKey("ovf_updates", Updates)
#: The engine token, set at startup (a one-element list: the app is frozen by then).
TOKEN = web.AppKey("engine_token", list[str])
