"""CORS on the image API: what a browser page of the engine's web admin
needs to upload and download (preflight, then the request), as imageio
answers it; nothing changes for clients that do not ask."""

from __future__ import annotations

import os
from typing import Any

from .conftest import AddTicket, Client

ORIGIN = {"Origin": "https://engine.example.com:8443"}
PREFLIGHT = {**ORIGIN, "Access-Control-Request-Method": "PUT",
             "Access-Control-Request-Headers": "cache-control,content-range,content-type"}


def cors(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith("access-control-")}


async def test_browser_upload_and_download(client: Client, image: Any,
                                           add_ticket: AddTicket) -> None:
    data = os.urandom(256 * 1024)
    ticket = await add_ticket(image(len(data)))

    resp = await client.options(f"/images/{ticket}", headers=PREFLIGHT)
    assert resp.status == 200, await resp.text()
    assert cors(resp.headers) == {
        "access-control-allow-origin": "*", "access-control-allow-headers": "*",
        "access-control-allow-methods": "OPTIONS,GET,PUT,PATCH",
        "access-control-max-age": "86400"}
    assert "zero" in (await resp.json())["features"]

    resp = await client.put(f"/images/{ticket}", data=data,
                            headers={**ORIGIN, "Content-Range": f"bytes 0-{len(data) - 1}/*"})
    assert resp.status == 200, await resp.text()
    assert cors(resp.headers) == {"access-control-allow-origin": "*",
                                  "access-control-max-age": "86400"}

    resp = await client.get(f"/images/{ticket}", headers=ORIGIN)  # a streamed answer
    assert resp.status == 200
    assert cors(resp.headers)["access-control-allow-origin"] == "*"
    assert await resp.read() == data

    # A refusal carries them too, so that the page can read why.
    resp = await client.put("/images/no-such-ticket", data=b"x", headers=ORIGIN)
    assert resp.status == 403
    assert cors(resp.headers)["access-control-allow-origin"] == "*"


async def test_no_cors_headers_unless_asked_or_off_the_image_api(
    client: Client, image: Any, add_ticket: AddTicket
) -> None:
    ticket = await add_ticket(image(4096))
    for method, path in [("OPTIONS", f"/images/{ticket}"), ("GET", f"/images/{ticket}"),
                         ("GET", f"/images/{ticket}/extents"), ("PUT", "/images/none")]:
        resp = await client.request(method, path, data=b"" if method == "PUT" else None)
        assert resp.status in (200, 403), (method, path, resp.status)
        assert cors(resp.headers) == {}, (method, path)
    # The control and engine routes are not for pages.
    for path in (f"/tickets/{ticket}", "/pool", "/info/"):
        resp = await client.get(path, headers=PREFLIGHT)
        assert resp.status == 200, path
        assert cors(resp.headers) == {}, path
