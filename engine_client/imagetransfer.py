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
import os
import stat
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .imageclient import Client, TransferError, _LocalError
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


@dataclass
class Result:
    size: int
    data_bytes: int
    retries: int
    checksum: str

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "data_bytes": self.data_bytes, "retries": self.retries,
                "checksum": self.checksum, "algorithm": ALGORITHM}


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data``: a write into a filling disk can be short."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _report(progress: Progress, n: int) -> None:
    """``progress(n)``; its failure is the caller's (stdout closed under
    ``| head``, a full terminal log), not the network's: never retried."""
    try:
        progress(n)
    except OSError as e:
        raise _LocalError(e) from None


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
        _report(self._progress, len(data))
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
            _report(progress, -sent[0])
            sent[0] = 0
        headers = {"Content-Range": f"bytes {start}-{end - 1}/*",
                   "Content-Length": str(end - start)}
        resp = client.request("PUT", "?flush=n", _RangeReader(f, start, end - start, report),
                              headers)
        client._checked(resp).read()

    client._retry(op)


def target_problem(path: str) -> str | None:
    """Why ``path`` cannot take a download, or None: it must be a regular
    file or not exist yet, through any symlinks (a download replaces the
    file they name)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:  # a symlink loop, a file as a directory, no search permission
        return f"cannot use it: {e.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return ("it is not a regular file (a download replaces the file once "
                "verified; give a file path)")
    return None


def download(client: Client, path: str, progress: Progress = lambda n: None,
             total: Progress = lambda n: None) -> Result:
    """``progress`` and ``total`` as for ``upload``.

    The image goes into a new file next to ``path`` (next to the file a
    symlink names: the link stays) and replaces it only once its checksum
    matches the host's: a download that fails leaves whatever ``path``
    held (the last good copy) as it was.  ``path`` must be a regular file
    or not exist (ValueError otherwise; see :func:`target_problem`).
    """
    target = os.path.realpath(path)
    problem = target_problem(target)
    if problem is not None:
        raise ValueError(f"cannot download into {path}: {problem}")
    extents = client.json("GET", "/extents?context=zero")
    size = extents[-1]["start"] + extents[-1]["length"] if extents else 0
    total(sum(e["length"] for e in extents if not e["zero"]))
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
            _report(progress, len(chunk))

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
