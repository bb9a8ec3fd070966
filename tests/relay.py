"""A TCP relay to a local daemon, in threads, for tests that break the
network on purpose: a subclass decides per chunk (``_chunk``) whether it
goes on, waits or ends the connection, or (``_forward``) what of it goes on."""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Self


class TcpRelay:
    def __init__(self, port: int) -> None:
        self.target = port
        self.socks: list[socket.socket] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _chunk(self, conn: int, down: bool, moved: int, size: int) -> bool:
        """Before ``size`` more bytes after ``moved`` of connection ``conn``
        (0 first), downstream or not; False ends the connection."""
        return True

    def _forward(self, conn: int, down: bool, moved: int, data: bytes) -> tuple[bytes, bool]:
        """What of ``data`` to pass on, and whether the connection goes on
        after it; by default all of it or nothing, as ``_chunk`` says."""
        go_on = self._chunk(conn, down, moved, len(data))
        return (data if go_on else b""), go_on

    def close(self) -> None:
        """Accept no more connections."""
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def via(self, url: str) -> str:
        """``url`` of the daemon, through this relay."""
        return url.replace(f":{self.target}/", f":{self.port}/", 1)

    def _accept(self) -> None:
        conn = 0
        while True:
            try:
                client, _ = self.sock.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                return
            self.socks += [client, upstream]
            for src, dst, down in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pipe, args=(src, dst, down, conn),
                                 daemon=True).start()
            conn += 1

    def _pipe(self, src: socket.socket, dst: socket.socket, down: bool, conn: int) -> None:
        moved = 0
        try:
            while data := src.recv(1 << 16):
                data, go_on = self._forward(conn, down, moved, data)
                dst.sendall(data)
                moved += len(data)
                if not go_on:
                    break
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
