"""The ticket JSON of the control API (``PUT /tickets/{id}``), as ovirt-imageio
checks it: field types, required fields, ops, timeouts and the ``file://``
URL, with imageio's error texts.  No I/O: where the URL may point is the
domain registry's business (``volume.domains``).
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from volume.errors import InvalidRequest

_FIELDS: dict[str, tuple[type, bool]] = {
    # name: (type, required)
    "uuid": (str, True),
    "size": (int, True),
    "ops": (list, True),
    "timeout": (int, True),
    # Either a file:// url, or the volume's UUIDs (sd_id, img_id, vol_id).
    "url": (str, False),
    "sd_id": (str, False),
    "img_id": (str, False),
    "vol_id": (str, False),
    "inactivity_timeout": (int, False),
    "transfer_id": (str, False),
    "filename": (str, False),
    "sparse": (bool, False),
    "dirty": (bool, False),
}
_OPS = ("read", "write")
#: Timeouts are seconds added to monotonic time, a float: 2**32 s (136
#: years) is plenty and keeps the sum exact; 10**400 would overflow it.
MAX_TIMEOUT = 2**32
#: In a header (filename goes into Content-Disposition), a log line or a
#: path (NUL), these break what they are put into.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _printable(name: str, value: str) -> str:
    if _CONTROL.search(value):
        raise InvalidRequest(f"Invalid ticket: Invalid value for {name!r}: "
                             "control characters are not allowed")
    return value


def check_timeout(name: str, value: Any, least: int = 0) -> int:
    """``value`` if it is a valid timeout in seconds, else InvalidRequest."""
    if not isinstance(value, int) or isinstance(value, bool) \
            or not least <= value <= MAX_TIMEOUT:
        raise InvalidRequest(
            f"Invalid value for {name!r}: {value!r}, expecting an integer "
            f"between {least} and {MAX_TIMEOUT}"
        )
    return value


def parse_ticket(body: Any, default_inactivity: int) -> dict[str, Any]:
    """Validate ticket JSON as imageio does; return the clean fields."""
    if not isinstance(body, dict):
        raise InvalidRequest("Ticket is not in a json format")
    clean: dict[str, Any] = {}
    for name, (kind, required) in _FIELDS.items():
        if name not in body:
            if required:
                raise InvalidRequest(
                    f"Invalid ticket: Required ticket parameter is missing: {name}"
                )
            continue
        value = body[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise InvalidRequest(
                f"Invalid ticket: Invalid value for {name!r}: {value!r} is not {kind.__name__}"
            )
        clean[name] = value
    for name in ("filename", "transfer_id"):
        if name in clean:
            _printable(name, clean[name])
    if clean["size"] < 0:
        raise InvalidRequest("Invalid ticket: Invalid value for 'size': must be >= 0")
    for name in ("timeout", "inactivity_timeout"):
        if name in clean:
            try:
                # An inactivity timeout of 0 would fail every transfer at once.
                check_timeout(name, clean[name], 1 if name == "inactivity_timeout" else 0)
            except InvalidRequest as e:
                raise InvalidRequest(f"Invalid ticket: {e}") from None
    ops = clean["ops"]
    if not ops or any(op not in _OPS for op in ops):
        raise InvalidRequest(f"Invalid ticket: Invalid value for 'ops': {ops!r}")
    ids = [k for k in ("sd_id", "img_id", "vol_id") if k in clean]
    if ids:
        if len(ids) != 3 or "url" in clean:
            raise InvalidRequest(
                "Invalid ticket: name the volume by url, or by all of sd_id, img_id, vol_id"
            )
        clean.update(inactivity_timeout=clean.get("inactivity_timeout", default_inactivity))
        clean.setdefault("sparse", False)
        clean.setdefault("dirty", False)
        return clean
    if "url" not in clean:
        raise InvalidRequest("Invalid ticket: Required ticket parameter is missing: url")
    url = urllib.parse.urlsplit(clean["url"])
    if url.scheme != "file":
        raise InvalidRequest(
            f"Invalid ticket: Invalid value for 'url': Unsupported url scheme: {url.scheme}"
        )
    if not url.path.startswith("/") or url.netloc not in ("", "localhost"):
        raise InvalidRequest("Invalid ticket: 'url' must be file:///absolute/path")
    clean["path"] = _printable("url", urllib.parse.unquote(url.path))
    clean.setdefault("inactivity_timeout", default_inactivity)
    clean.setdefault("sparse", False)
    clean.setdefault("dirty", False)
    return clean
