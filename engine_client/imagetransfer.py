"""Move a local image to or from an image URL (any imageio-compatible host).

Synchronous on purpose: the CLI moves one image at a time and
``http.client`` streams a file body with no copies.  Sparse-aware: only
data ranges travel (holes found with SEEK_DATA/SEEK_HOLE on upload, with
``/extents`` on download); zero ranges become ``PATCH zero`` or stay holes.
A broken connection is resumed by range: the interrupted request is sent
again from its start (PUT) or from the last byte received (GET), with
backoff; a failed local read or write is not the network's fault and
raises its ``OSError`` at once.  At the end the server's block-hash
checksum must equal the local file's, or the transfer fails.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import ssl
import stat
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .localhash import _data_ranges, checksum

#: One request at most, as the imageio client does.
MAX_REQUEST = 128 << 20
#: File reads per send; large enough that syscalls do not matter.
CHUNK = 4 << 20
ALGORITHM = "xxh3_128"
#: The host answers ``/checksum`` only once it has read the whole image,
#: so that request waits at least size / this rate: a slow NFS domain reads
#: 50 MB/s, and a 100 GiB disk then takes 36 minutes, not the 60 seconds
#: another answer gets before the connection counts as lost.
CHECKSUM_RATE = 50 * 10**6

Progress = Callable[[int], None]


class TransferError(Exception):
    """One plain sentence for the user."""


class _LocalError(Exception):
    """A read or write of the local file failed: the network is fine, so
    ``Client._retry`` raises the ``OSError`` as it is instead of retrying."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class Result:
    size: int
    data_bytes: int
    retries: int
    checksum: str

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "data_bytes": self.data_bytes, "retries": self.retries,
                "checksum": self.checksum, "algorithm": ALGORITHM}


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


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data``: a write into a filling disk can be short."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class _RangeReader:
    """A file range as a request body, reporting progress as it is read."""

    def __init__(self, f: Any, start: int, length: int, progress: Progress) -> None:
        self._f, self._pos, self._left, self._progress = f, start, length, progress

    def read(self, n: int = CHUNK) -> bytes:
        n = min(max(n, CHUNK), self._left)
        if n <= 0:
            return b""
        try:
            data = os.pread(self._f.fileno(), n, self._pos)
        except OSError as e:
            raise _LocalError(e) from None
        if not data:
            raise TransferError("the local file shrank during the upload")
        self._pos += len(data)
        self._left -= len(data)
        self._progress(len(data))
        return data


def upload(path: str, client: Client, progress: Progress = lambda n: None,
           total: Progress = lambda n: None) -> Result:
    """``progress``: bytes sent (negative on a retry); ``total``: called once,
    before them, with the bytes of data that will travel (holes do not)."""
    features = client.json("OPTIONS").get("features", [])
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = _data_ranges(f.fileno(), size)
        total(sum(e - s for s, e in data))
        pos = 0
        for start, end in [*data, (size, size)]:
            if start > pos:  # a hole: zero it remotely, never send it
                if "zero" in features:
                    client.json("PATCH", "", {"op": "zero", "offset": pos, "size": start - pos})
                else:
                    raise TransferError("the server cannot zero ranges; refusing to send holes")
            for s in range(start, end, MAX_REQUEST):
                e = min(s + MAX_REQUEST, end)
                _put(client, f, s, e, progress)
            pos = end
    if "flush" in features:
        client.json("PATCH", "", {"op": "flush"})
    return _verify(client, path, size, sum(e - s for s, e in data))


def _put(client: Client, f: Any, start: int, end: int, progress: Progress) -> None:
    sent = [0]

    def report(n: int) -> None:
        sent[0] += n
        progress(n)

    def op() -> None:
        if sent[0]:  # a retry: take back the progress of the broken attempt
            progress(-sent[0])
            sent[0] = 0
        headers = {"Content-Range": f"bytes {start}-{end - 1}/*",
                   "Content-Length": str(end - start)}
        resp = client.request("PUT", "?flush=n", _RangeReader(f, start, end - start, report),
                              headers)
        client._checked(resp).read()

    client._retry(op)


def download(client: Client, path: str, progress: Progress = lambda n: None,
             total: Progress = lambda n: None) -> Result:
    """``progress`` and ``total`` as for ``upload``.

    The image goes into a new file next to ``path`` and replaces it only
    once its checksum matches the host's: a download that fails leaves
    whatever ``path`` held (the last good copy) as it was.
    """
    extents = client.json("GET", "/extents?context=zero")
    size = extents[-1]["start"] + extents[-1]["length"] if extents else 0
    total(sum(e["length"] for e in extents if not e["zero"]))
    target = os.path.abspath(path)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = 0o644
    fd, part = tempfile.mkstemp(dir=os.path.dirname(target),
                                prefix=f".{os.path.basename(target)}.", suffix=".part")
    try:
        try:
            os.fchmod(fd, mode)
            # A new file: the zero extents are never written, holes read as zeros.
            os.ftruncate(fd, size)
            data_bytes = 0
            for ext in extents:
                if ext["zero"]:
                    continue
                start, end = ext["start"], ext["start"] + ext["length"]
                data_bytes += end - start
                for s in range(start, end, MAX_REQUEST):
                    _get(client, fd, s, min(s + MAX_REQUEST, end), progress)
            os.fsync(fd)
        finally:
            os.close(fd)
        result = _verify(client, part, size, data_bytes)
        os.rename(part, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise
    _fsync_dir(os.path.dirname(target))
    return result


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _get(client: Client, fd: int, start: int, end: int, progress: Progress) -> None:
    pos = [start]

    def op() -> None:
        resp = client._checked(
            client.request("GET", "", headers={"Range": f"bytes={pos[0]}-{end - 1}"}), 206)
        while pos[0] < end:
            chunk = resp.read(min(CHUNK, end - pos[0]))
            if not chunk:
                raise http.client.IncompleteRead(b"")
            try:
                _pwrite_all(fd, chunk, pos[0])
            except OSError as e:
                raise _LocalError(e) from None
            pos[0] += len(chunk)
            progress(len(chunk))

    client._retry(op)  # a retry resumes from the last byte written


def _verify(client: Client, path: str, size: int, data_bytes: int) -> Result:
    """Both checksums at once: the local file's in a thread while the host reads its image."""
    with ThreadPoolExecutor(1, thread_name_prefix="checksum") as pool:
        local = pool.submit(checksum, path, ALGORITHM)
        theirs = client.json("GET", f"/checksum?algorithm={ALGORITHM}",
                             timeout=size / CHECKSUM_RATE)
        ours = local.result()
    if theirs.get("checksum") != ours["checksum"]:
        raise TransferError(f"checksums differ after the transfer: the server has "
                            f"{theirs.get('checksum')}, the local file {ours['checksum']}")
    return Result(size, data_bytes, client.retries, ours["checksum"])
