"""The servers the bench runs, each started by the bench itself on 127.0.0.1.

Each module has ``serve(workspace, tls) -> contextmanager[Server]`` and the
clients it is measured with, per direction.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from ..tls import TLSFiles
from ..workspace import Workspace
from . import imageio, nginx, sluice
from .base import Server, Target

Serve = Callable[[Workspace, TLSFiles | None], AbstractContextManager[Server]]


@dataclass(frozen=True)
class Peer:
    name: str
    serve: Serve
    upload_clients: tuple[str, ...]
    download_clients: tuple[str, ...]


PEERS = {
    m.__name__.rsplit(".", 1)[1]: Peer(m.__name__.rsplit(".", 1)[1], m.serve,
                                       m.UPLOAD_CLIENTS, m.DOWNLOAD_CLIENTS)
    for m in (imageio, nginx, sluice)
}

__all__ = ["PEERS", "Peer", "Server", "Target"]
