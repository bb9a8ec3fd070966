"""An aiohttp client of the host daemon's engine routes.

Every request is bounded in time (``HttpConfig``), and every failure
becomes one ``HostError`` whose message says which host, which request and
what went wrong: down (``unreachable``), too slow (``timeout``), the
connection dropped (``disconnected``), or the host's own ``{"error",
"detail"}`` answer with its HTTP status.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterable, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from .config import HttpConfig
from .errors import HostError
from .model import Host

log = logging.getLogger(__name__)

#: Answers of the engine routes are small JSON documents.
MAX_ANSWER = 4 << 20
#: A store download is handed on in pieces of at most this size.
DOWNLOAD_CHUNK = 1 << 20
#: Least timeout of ``GET .../ovf-store/info``: the host waits up to 10 s
#: for a running update's copies before it answers ("updating"), and a
#: shorter ``http.request_timeout`` or ``read_timeout`` would never see
#: that answer.
INFO_TIMEOUT = 20.0


@dataclass(frozen=True)
class StoreDownload:
    """What a host said about the OVF store it sent, and how much came."""

    generation: int
    digest: str  # xxh3-128 hex, as the host's commit record has it
    length: int  # Content-Length
    received: int


async def _read_answer(content: aiohttp.StreamReader) -> bytes:
    """The whole answer, up to MAX_ANSWER bytes (``read(n)`` returns what
    has arrived, which may be less)."""
    parts: list[bytes] = []
    total = 0
    while total < MAX_ANSWER:
        part = await content.read(MAX_ANSWER - total)
        if not part:
            break
        parts.append(part)
        total += len(part)
    return b"".join(parts)


def _decode(body: bytes) -> Any:
    """An answer's JSON, or None if it is not JSON (a proxy's page, say)."""
    try:
        return json.loads(body)
    except ValueError:
        return None


def make_session(http: HttpConfig) -> aiohttp.ClientSession:
    """One session for all hosts; each request sets its own timeouts."""
    ctx: ssl.SSLContext | bool = True
    if http.ca_file:
        ctx = ssl.create_default_context(cafile=http.ca_file)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx),
                                 raise_for_status=False)


class Clients:
    """Clients of hosts over one session: the given one, or one made on first
    use (and closed by ``close``; a given session is its owner's to close)."""

    def __init__(self, http: HttpConfig, session: aiohttp.ClientSession | None = None) -> None:
        self._http = http
        self._session = session
        self._own = session is None

    def __call__(self, host: Host) -> HostClient:
        if self._session is None:
            self._session = make_session(self._http)
        return HostClient(host, self._session, self._http)

    async def close(self) -> None:
        if self._own and self._session is not None:
            await self._session.close()
            self._session = None


class HostClient:
    def __init__(self, host: Host, session: aiohttp.ClientSession, http: HttpConfig) -> None:
        self.host = host
        self._session = session
        self._http = http
        self._headers = {"Authorization": f"Bearer {host.token}"}

    def _timeout(self, total: float, wait: float = 0.0) -> aiohttp.ClientTimeout:
        """``total`` for the exchange, but at least ``wait``, the seconds the
        host may take on purpose before it answers (so does each read)."""
        return aiohttp.ClientTimeout(total=max(total, wait),
                                     sock_connect=self._http.connect_timeout,
                                     sock_read=max(self._http.read_timeout, wait))

    def _bound(self, timeout: aiohttp.ClientTimeout) -> float:
        """The seconds after which ``timeout`` gives up on a silent host."""
        return min(t for t in (timeout.total, timeout.sock_read) if t is not None)

    @contextlib.contextmanager
    def _failures(self, what: str, timeout: float) -> Iterator[None]:
        """Turn a failed exchange into one HostError saying what went wrong."""
        try:
            yield
        except aiohttp.ClientConnectorError as e:
            raise HostError(self.host.name, f"{what}: cannot connect to {self.host.url}: "
                            f"{e.os_error.strerror or e.os_error}", code="unreachable") from None
        except TimeoutError:
            raise HostError(self.host.name, f"{what}: no answer within {timeout:g} s",
                            code="timeout") from None
        except aiohttp.ClientError as e:
            raise HostError(self.host.name, f"{what}: the connection failed: "
                            f"{e or type(e).__name__}", code="disconnected") from None

    def _refused(self, what: str, status: int, body: bytes, answer: Any) -> HostError:
        """The HostError of an answer with an error status."""
        if isinstance(answer, dict) and "error" in answer:
            detail = f"{answer.get('error')}: {answer.get('detail', '')}".rstrip(": ")
            code = str(answer["error"])
        else:
            detail, code = body[:200].decode(errors="replace"), "error"
        detail = " ".join(detail.split())  # a proxy's HTML page: one line in messages
        return HostError(self.host.name, f"{what} answered {status} {detail}",
                         status=status, code=code,
                         body=answer if isinstance(answer, dict) else None)

    async def _request(self, method: str, path: str, *, total: float | None = None,
                       wait: float = 0.0, empty_ok: bool = False,
                       **kwargs: Any) -> dict[str, Any]:
        what = f"{method} {path}"
        url = self.host.url + path
        headers = {**self._headers, **kwargs.pop("headers", {})}
        timeout = self._timeout(total if total is not None else self._http.request_timeout,
                                wait)
        with self._failures(what, self._bound(timeout)):
            async with self._session.request(method, url, headers=headers,
                                             timeout=timeout, **kwargs) as resp:
                body = await _read_answer(resp.content)
                status = resp.status
        answer = _decode(body)
        if status >= 400:
            raise self._refused(what, status, body, answer)
        if empty_ok and not body.strip():
            answer = {}  # 200 or 204 without a body (tickets, deletions)
        if not isinstance(answer, dict):
            raise HostError(self.host.name, f"{what} answered {status} without a JSON object",
                            status=status, code="bad-answer")
        log.debug("host=%s %s -> %d", self.host.name, what, status)
        return answer

    async def info(self) -> dict[str, Any]:
        return await self._request("GET", "/info/")

    async def features(self) -> set[str]:
        features = (await self.info()).get("features", [])
        return {str(f) for f in features} if isinstance(features, list) else set()

    async def put_pool(self, pool_map: dict[str, Any]) -> dict[str, Any]:
        return await self._request("PUT", "/pool", json=pool_map)

    async def stats(self) -> dict[str, Any]:
        return await self._request("GET", "/stats")

    async def ovf_store_info(self, sd_uuid: str) -> dict[str, Any]:
        return await self._request("GET", f"/domains/{sd_uuid}/ovf-store/info",
                                   wait=INFO_TIMEOUT)

    async def read_ovf_store(self, sd_uuid: str, sink: Callable[[bytes], Awaitable[None]],
                             max_length: int) -> StoreDownload:
        """Stream the newest valid store of ``sd_uuid`` into ``sink``, a chunk
        at a time; what the host says it sent.  The caller checks the bytes.
        A store announced longer than ``max_length`` is refused unread."""
        what = f"GET /domains/{sd_uuid}/ovf-store"
        timeout = self._http.upload_timeout  # a whole store, as for a push
        with self._failures(what, timeout):
            async with self._session.get(self.host.url + f"/domains/{sd_uuid}/ovf-store",
                                         headers=self._headers,
                                         timeout=self._timeout(timeout)) as resp:
                if resp.status != 200:
                    body = await _read_answer(resp.content)
                    raise self._refused(what, resp.status, body, _decode(body))
                generation = resp.headers.get("X-Ovf-Generation", "")
                digest = resp.headers.get("X-Ovf-Digest", "").removeprefix("xxh3_128:")
                if resp.content_length is None or not generation.isdigit():
                    raise HostError(self.host.name, f"{what} answered without a length or "
                                    "a generation", code="bad-answer")
                if resp.content_length > max_length:
                    raise HostError(self.host.name, f"{what} announced {resp.content_length} "
                                    f"bytes, over the {max_length} a store may have",
                                    code="too-large")
                received = 0
                async for chunk in resp.content.iter_chunked(DOWNLOAD_CHUNK):
                    received += len(chunk)
                    await sink(chunk)
        return StoreDownload(int(generation), digest, resp.content_length, received)

    async def put_ovf_store(self, sd_uuid: str, body: AsyncIterable[bytes],
                            length: int | None, zstd: bool) -> dict[str, Any]:
        """Stream a store's tar; ``length`` None sends it chunked."""
        # Our tars always carry a manifest: the host refuses one without.
        headers = {"Content-Type": "application/x-tar", "X-Ovf-Manifest": "required"}
        if length is not None:
            headers["Content-Length"] = str(length)
        if zstd:
            headers["Content-Encoding"] = "zstd"
        return await self._request("PUT", f"/domains/{sd_uuid}/ovf-store", data=body,
                                   headers=headers, total=self._http.upload_timeout)
