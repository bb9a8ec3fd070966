"""Typed keys of the application state shared by the handlers."""

from __future__ import annotations

from aiohttp import web

from volume.domains import DomainRegistry

from .config import Config
from .io import IO
from .tickets import Authorizer

CONFIG = web.AppKey("config", Config)
IO_KEY = web.AppKey("io", IO)
AUTH = web.AppKey("auth", Authorizer)
DOMAINS = web.AppKey("domains", DomainRegistry)
