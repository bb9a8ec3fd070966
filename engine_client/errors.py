"""The engine side's errors.  Each message is one plain sentence for the
operator; the command line prints it as it is."""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine side reports to its user."""


class InvalidInput(EngineError):
    """Bad input: a file, an argument or a config value we refuse."""


class NotFound(EngineError):
    """An entity, disk, domain or host that the cache does not know."""


class HostError(EngineError):
    """A host did not do what we asked: down, too slow, or it answered an error.

    ``status`` is the HTTP status (None when no answer came) and ``code`` the
    host's error code (``"stale-map"``, ``"unauthorized"``, ...) or a local
    one (``"unreachable"``, ``"timeout"``, ``"digest-mismatch"``).
    """

    def __init__(self, host: str, detail: str, status: int | None = None,
                 code: str = "error", body: dict[str, object] | None = None) -> None:
        super().__init__(f"host {host}: {detail}")
        self.host = host
        self.detail = detail
        self.status = status
        self.code = code
        self.body = body or {}
