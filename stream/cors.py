"""Cross-origin (CORS) headers on the image API, as ovirt-imageio sends them.

The engine's web admin uploads and downloads disks from the browser: the
page comes from the engine, the bytes go to this daemon, so the browser
first sends a preflight ``OPTIONS`` (with ``Access-Control-Request-Method``
and ``-Headers``) and then the ``PUT`` or ``GET`` with an ``Origin``.  Like
imageio, any origin may use a ticket (the ticket id in the URL is the
secret), with any header; the answer says so only when the request asks,
so other clients see no difference.

The headers are added when a response's headers are sent
(``on_response_prepare``): streamed downloads and error answers get them
too, so a page can read why its upload was refused.
"""

from __future__ import annotations

from aiohttp import web

PREFIX = "/images/"
#: imageio lets its answers be cached for a day.
MAX_AGE = str(24 * 3600)
#: The methods of the image API (imageio's preflight answer omits PATCH,
#: which its web admin does not use; a page may zero and flush here).
METHODS = "OPTIONS,GET,PUT,PATCH"


#: (what the request asks, the answer's header, its value)
_RULES = (
    ("Origin", "Access-Control-Allow-Origin", "*"),
    ("Access-Control-Request-Headers", "Access-Control-Allow-Headers", "*"),
    ("Access-Control-Request-Method", "Access-Control-Allow-Methods", METHODS),
)


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The ``on_response_prepare`` signal handler."""
    if not request.path.startswith(PREFIX):
        return
    added = False
    for asked, header, value in _RULES:
        if request.headers.get(asked):
            response.headers[header] = value
            added = True
    if added:
        response.headers["Access-Control-Max-Age"] = MAX_AGE
