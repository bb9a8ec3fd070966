"""A synchronous client of one image URL: requests, retries, error sentences.

``http.client`` on purpose (see ``imagetransfer``): the CLI moves one image
at a time, and it streams a file body with no copies.  A broken connection
is retried with backoff; a failed local read or write (``_LocalError``) is
not the network's fault and is raised at once; an error answer becomes one
sentence (``TransferError``).
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
import urllib.parse
from collections.abc import Callable
from typing import Any


class TransferError(Exception):
    """One plain sentence for the user."""


class _LocalError(Exception):
    """A read or write of the local file failed: the network is fine, so
    ``Client._retry`` raises the ``OSError`` as it is instead of retrying."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class Client:
    def __init__(self, url: str, *, cafile: str | None = None, insecure: bool = False,
                 retries: int = 5, timeout: float = 60) -> None:
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise TransferError(f"{url} is not an http(s) image URL")
        self.path = u.path.rstrip("/")
        self._host, self._port, self._tls = u.hostname, u.port, u.scheme == "https"
        self._ctx: ssl.SSLContext | None = None
        if self._tls:
            try:
                self._ctx = ssl.create_default_context(cafile=cafile)
            except OSError as e:  # ssl.SSLError too: not the image file's fault
                raise TransferError(f"cannot load the CA file {cafile}: "
                                    f"{e.strerror or e}") from None
            if insecure:
                self._ctx.check_hostname = False
                self._ctx.verify_mode = ssl.CERT_NONE
        self._timeout = timeout
        self.max_retries = retries
        self.retries = 0
        self._conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._tls:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=self._ctx)
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port,
                                                        timeout=self._timeout)
        return self._conn

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, suffix: str = "", body: Any = None,
                headers: dict[str, str] | None = None,
                timeout: float | None = None) -> http.client.HTTPResponse:
        """``timeout``: seconds this request may wait for data, if longer
        than the client's."""
        conn = self._connect()
        conn.timeout = max(self._timeout, timeout or 0.0)  # a new connection's
        if conn.sock is not None:
            conn.sock.settimeout(conn.timeout)
        conn.request(method, self.path + suffix, body=body, headers=headers or {})
        return conn.getresponse()

    def json(self, method: str, suffix: str = "", msg: Any = None,
             timeout: float | None = None) -> Any:
        body = json.dumps(msg).encode() if msg is not None else None
        headers = {"Content-Type": "application/json"} if body else {}

        # The body is read inside the retry: a cut after the headers is a cut
        # too.  (Each request sets the socket's timeout, so a long one ends here.)
        data = self._retry(lambda: self._checked(
            self.request(method, suffix, body, headers, timeout)).read())
        try:
            return json.loads(data) if data else None
        except ValueError:
            raise TransferError(f"the server answered {method} {self.path}{suffix} with "
                                "something that is not JSON") from None

    @staticmethod
    def _checked(resp: http.client.HTTPResponse, *ok: int) -> http.client.HTTPResponse:
        if resp.status not in (ok or (200,)):
            raise TransferError(f"the server answered {resp.status}: {_detail(resp)}")
        return resp

    def _retry(self, op: Callable[[], Any]) -> Any:
        """Run ``op``, reconnecting and retrying on a broken connection."""
        delay = 0.5
        while True:
            try:
                return op()
            except _LocalError as e:
                raise e.error from None
            except (OSError, http.client.HTTPException) as e:
                self.close()
                if self.retries >= self.max_retries:
                    raise TransferError(f"the connection failed {self.retries + 1} times; "
                                        f"last error: {e}") from None
                self.retries += 1
                time.sleep(delay)
                delay = min(delay * 2, 10)


def _detail(resp: http.client.HTTPResponse) -> str:
    """An error answer's text on one line: the ``detail`` of a JSON error, a
    plain text body, or the reason phrase (for a proxy's HTML page, say)."""
    body = resp.read(4096).decode(errors="replace")
    kind = resp.getheader("Content-Type", "text/plain").partition(";")[0].strip().lower()
    text = ""
    if kind.endswith("json"):
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if isinstance(answer, dict):
            text = str(answer.get("detail") or answer.get("error") or "")
    elif kind == "text/plain":
        text = body
    return " ".join(text.split()) or resp.reason
