"""Logging that carries the transfer id.

Handlers set ``transfer_id`` once per request; the filter stamps every record
(including those from I/O worker threads, which run in a copy of the
request's context) so operators can grep one transfer end to end.
"""

from __future__ import annotations

import contextvars
import logging

transfer_id: contextvars.ContextVar[str] = contextvars.ContextVar("transfer_id", default="-")

FORMAT = "%(asctime)s %(levelname)-7s (%(threadName)s) [%(name)s] [%(transfer)s] %(message)s"


class TransferFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.transfer = transfer_id.get()
        return True


def setup(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(TransferFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log duplicates our own request lines.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
