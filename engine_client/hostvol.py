"""The host routes a disk copy needs: volumes, tickets, copy jobs, checksums.

Thin typed calls over ``HostClient`` (same timeouts, same ``HostError``
messages).  A volume is named everywhere by ``VolumeRef``: the storage
domain, the image (oVirt's disk) and the volume UUIDs.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import HostError
from .hostapi import HostClient

#: Verification hash of copies and transfers: xxh3-128 block hash, as the
#: daemon's copy jobs use (25 times faster than blake2b, measurements.md).
ALGORITHM = "xxh3_128"
#: A ticket the engine opens lives this long without use; every request
#: re-arms it, and the engine deletes it when the transfer ends.
TICKET_TIMEOUT = 3600


@dataclass(frozen=True)
class VolumeRef:
    sd_uuid: str
    img_uuid: str
    vol_uuid: str

    def to_json(self) -> dict[str, str]:
        return {"sd_id": self.sd_uuid, "img_id": self.img_uuid, "vol_id": self.vol_uuid}

    @property
    def path(self) -> str:
        return f"/domains/{self.sd_uuid}/images/{self.img_uuid}/volumes/{self.vol_uuid}"


def ticket_size(size: int, fmt: str) -> int:
    """A ticket's size for a volume's bytes.  A qcow2 file holds metadata beside
    its data; the bound vdsm uses for estimates (1/64 more, plus 16 MiB) covers it."""
    return size if fmt == "raw" else size + size // 64 + (16 << 20)


async def list_volumes(c: HostClient, sd_uuid: str, image: str | None
                       ) -> list[dict[str, Any]]:
    """The volumes of one image on a domain (a chain, parents first), or of
    every image with None."""
    answer = await c._request("GET", f"/domains/{sd_uuid}/volumes",
                              params={"image": image} if image is not None else None)
    volumes = answer.get("volumes")
    if not isinstance(volumes, list):
        raise HostError(c.host.name, "GET volumes answered without a list", code="bad-answer")
    return [v for v in volumes if isinstance(v, dict)]


async def get_volume(c: HostClient, ref: VolumeRef) -> dict[str, Any] | None:
    try:
        return await c._request("GET", ref.path)
    except HostError as e:
        if e.status == 404:
            return None
        raise


async def volume_users(c: HostClient, refs: Sequence[VolumeRef]) -> list[str]:
    """What on ``c``'s host still reads or writes ``refs`` (each volume's
    ``in_use``: a ticket, a copy job), one phrase each.  A host knows only
    its own tickets: a volume of a shared domain is free only if every
    host serving the domain says so."""
    found = []
    for ref in refs:
        info = await get_volume(c, ref)
        user = info.get("in_use") if info else None
        if user:
            found.append(f"{user} on host {c.host.name} (volume {ref.vol_uuid})")
    return found


async def create_volume(c: HostClient, ref: VolumeRef, size: int, fmt: str,
                        allocation: str, description: str = "",
                        parent: str | None = None, legal: bool = True) -> dict[str, Any]:
    """``legal`` False: marked incomplete from the start (see :func:`set_legal`)."""
    spec: dict[str, Any] = {"img_id": ref.img_uuid, "vol_id": ref.vol_uuid, "size": size,
                            "format": fmt, "allocation": allocation,
                            "description": description}
    if parent is not None:
        spec["parent"] = parent
    if not legal:
        spec["legal"] = False
    return await c._request("POST", f"/domains/{ref.sd_uuid}/volumes", json=spec)


async def set_legal(c: HostClient, ref: VolumeRef, legal: bool) -> None:
    """Mark the volume's content complete or not (``disk list`` shows it; a
    copy refuses an incomplete source)."""
    await c._request("PATCH", ref.path, json={"legal": legal})


async def delete_volume(c: HostClient, ref: VolumeRef) -> None:
    await c._request("DELETE", ref.path, empty_ok=True)


async def add_ticket(c: HostClient, ref: VolumeRef, size: int, ops: list[str],
                     sparse: bool = False, ticket: str | None = None) -> str:
    """Open a ticket (``ticket``, or a new id) on the volume; answers its
    image URL on that host."""
    ticket = ticket or str(uuid.uuid4())
    await c._request("PUT", f"/tickets/{ticket}", empty_ok=True, json={
        "uuid": ticket, "size": size, "ops": ops, "timeout": TICKET_TIMEOUT,
        "sparse": sparse, "transfer_id": f"engine-{ticket[:8]}", **ref.to_json()})
    return f"{c.host.url}/images/{ticket}"


async def delete_ticket(c: HostClient, url: str) -> None:
    ticket = url.rstrip("/").rpartition("/")[2]
    await c._request("DELETE", f"/tickets/{ticket}", empty_ok=True)


async def start_copy(c: HostClient, source: dict[str, Any], destination: VolumeRef
                     ) -> dict[str, Any]:
    return await c._request("POST", "/jobs/copy", json={
        "job_id": str(uuid.uuid4()), "source": source, "destination": destination.to_json()})


async def get_job(c: HostClient, job_id: str) -> dict[str, Any]:
    return await c._request("GET", f"/jobs/{job_id}")


async def cancel_job(c: HostClient, job_id: str) -> dict[str, Any]:
    return await c._request("DELETE", f"/jobs/{job_id}")


async def image_checksum(c: HostClient, url: str) -> str:
    """The host's xxh3-128 block hash of the image behind a ticket URL."""
    path = url[len(c.host.url):] + "/checksum"
    answer = await c._request("GET", path, params={"algorithm": ALGORITHM},
                              total=max(c._http.upload_timeout, c._http.request_timeout))
    return str(answer.get("checksum"))
