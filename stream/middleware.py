"""The one place where errors become HTTP answers.

Our errors (``volume.errors.Error`` and the wire parsers' ``WireError``)
carry their status.  Routes that ovirt-imageio clients use answer in text,
as imageio does (its client shows the first 512 bytes of the body); all
other routes answer ``{"error": code, "detail": message}``.  Unexpected
exceptions become 500 "check logs", never a traceback.  An error after the
response has started cannot change the status: the connection is aborted so
the client sees a truncated body rather than a silent success.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from volume.errors import Error, OutOfRange

from .errors import ClientGone, Stalled
from .wire.errors import BadRange, WireError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Set on the request by streaming handlers right after ``prepare()``.
RESPONSE = web.RequestKey("response", web.StreamResponse)
#: Prefixes whose errors are plain text (ovirt-imageio compatibility).
TEXT_PREFIXES = ("/images/", "/info/", "/tickets/")


def error_response(
    request: web.Request, status: int, code: str, detail: str,
    extra: dict[str, object] | None = None,
) -> web.Response:
    headers: dict[str, str] = {}
    if request.path.startswith(TEXT_PREFIXES):
        resp = web.Response(status=status, text=detail + "\n", headers=headers)
    else:
        body = json.dumps({"error": code, "detail": detail, **(extra or {})})
        resp = web.Response(
            status=status, text=body, content_type="application/json", headers=headers
        )
    if request.can_read_body and not request.content.at_eof():
        # The body was not consumed: the connection cannot be reused.
        resp.force_close()
    return resp


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except asyncio.CancelledError:
        raise
    except web.HTTPException as e:
        if e.status < 400:
            raise
        resp = error_response(request, e.status, e.reason.lower().replace(" ", "-"), e.reason)
        if "Allow" in e.headers:  # 405: RFC 9110 §15.5.6 requires it
            resp.headers["Allow"] = e.headers["Allow"]
        return resp
    except (Error, WireError) as e:
        started = request.get(RESPONSE)
        if started is not None and started.prepared:
            log.error("%s %s failed after the answer started: %s", request.method,
                      _where(request), _redact(request, str(e)))
            return _abort(request, started)
        level = logging.ERROR if e.http_status >= 500 else logging.WARNING
        log.log(level, "%s %s: %d %s", request.method, _where(request), e.http_status,
                _redact(request, str(e)))
        resp = error_response(
            request, e.http_status, e.code, e.detail, getattr(e, "extra", None)
        )
        if isinstance(e, OutOfRange | BadRange):
            resp.headers["Content-Range"] = f"bytes */{e.size}"
        if e.http_status == 403:
            resp.force_close()
        return resp
    except (ConnectionError, OSError) as e:
        if isinstance(e, ConnectionError) or request.transport is None:
            # The client went away, or stopped reading (Stalled): nobody is
            # listening.  An answer, not the exception: aiohttp would log
            # its traceback.
            level = logging.WARNING if isinstance(e, Stalled) else logging.INFO
            what = e if isinstance(e, ClientGone) else f"client disconnected: {e}"
            log.log(level, "%s %s: %s", request.method, _where(request), what)
            started = request.get(RESPONSE)
            return _abort(request, started if started is not None else web.Response(status=499))
        log.exception("%s %s failed", request.method, _where(request))
        return _internal(request)
    except Exception:
        log.exception("%s %s failed", request.method, _where(request))
        started = request.get(RESPONSE)
        if started is not None and started.prepared:
            return _abort(request, started)
        return _internal(request)


def _ticket_id(request: web.Request) -> str | None:
    """The ticket id in an image URL: the secret that grants the transfer."""
    if request.path.startswith("/images/"):
        return request.path[len("/images/"):].split("/", 1)[0] or None
    return None


def _redact(request: web.Request, text: str) -> str:
    """``text`` with the request's ticket id cut to its first 8 characters,
    as every other log line of the daemon names tickets (imageio does too):
    a log reader must not be able to use the transfer."""
    ticket_id = _ticket_id(request)
    return text.replace(ticket_id, ticket_id[:8] + "...") if ticket_id else text


def _where(request: web.Request) -> str:
    return _redact(request, request.path)


def _internal(request: web.Request) -> web.Response:
    return error_response(
        request, 500, "internal-error", "Server failed to perform the request, check logs"
    )


def _abort(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
    if request.transport is not None:
        request.transport.abort()
    return resp
