"""Realistic OVFs of an exact size, and an OVF_STORE tar of them on disk.

An OVF here is shaped like the engine's OvfVmWriter output (one disk on a
given domain, CPU, memory, NICs, devices), its padding made of more device
items with their own UUIDs, so it compresses about as much as a real one
does, not to nothing.  Every OVF is a pure function of (VM UUID, domain,
size): the tar is planned from the digests and the bytes are made again
while it is written, so the bench never holds all OVFs at once.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import xxhash

from stream.wire import manifest, tarplan

NS = " ".join([
    'xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/"',
    'xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/'
    'CIM_ResourceAllocationSettingData"',
    'xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/'
    'CIM_VirtualSystemSettingData"',
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'])
BLANK = "00000000-0000-0000-0000-000000000000"
#: Device kinds and their rasd:ResourceType (never 17, a disk image).
DEVICES = (("nic", 10), ("video", 20), ("balloon", 0), ("rng", 0), ("controller", 6),
           ("channel", 0), ("usb", 23), ("sound", 0))


@dataclass(frozen=True)
class Spec:
    """One VM: its UUID, the domain of its disk, the OVF's exact size."""

    vm: str
    sd: str
    size: int


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _device(rng: random.Random, i: int) -> str:
    kind, rtype = DEVICES[i % len(DEVICES)]
    mac = ":".join(f"{rng.getrandbits(8):02x}" for _ in range(3))
    return (f"<Item><rasd:Caption>{kind}{i}</rasd:Caption><rasd:InstanceId>{_uuid(rng)}"
            f"</rasd:InstanceId><rasd:ResourceType>{rtype}</rasd:ResourceType>"
            f"<rasd:MACAddress>56:6f:{rng.getrandbits(8):02x}:{mac}</rasd:MACAddress>"
            f"<Type>{kind}</Type><Device>{kind}</Device><rasd:Address>{{type=pci, "
            f"slot=0x{i % 32:02x}, bus=0x00, domain=0x0000, function=0x0}}</rasd:Address>"
            f"<IsPlugged>true</IsPlugged><IsReadOnly>false</IsReadOnly><Alias>ua-{_uuid(rng)}"
            "</Alias></Item>\n      ")


def ovf(spec: Spec) -> bytes:
    """The OVF of ``spec``: exactly ``spec.size`` bytes (at least about 3 KiB)."""
    rng = random.Random(spec.vm)
    disk, image = _uuid(rng), _uuid(rng)
    head = (f'<?xml version="1.0" encoding="UTF-8"?>\n<ovf:Envelope {NS} ovf:version="4.5.0.0">'
            f'<References><File ovf:href="{disk}/{image}" ovf:id="{image}" ovf:size="1073741824"'
            f'/></References><Section xsi:type="ovf:DiskSection_Type"><Info>Disks</Info>'
            f'<Disk ovf:diskId="{image}" ovf:size="1" ovf:actual_size="0" '
            f'ovf:fileRef="{disk}/{image}" ovf:volume-format="RAW" ovf:volume-type="Sparse" '
            f'ovf:shareable="false" ovf:boot="true"/></Section>\n'
            f'<Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type"><Name>vm-{spec.vm[:8]}'
            f"</Name><Generation>1</Generation><TemplateId>{BLANK}</TemplateId><Origin>0"
            f'</Origin><Section ovf:id="{spec.vm}" ovf:required="false" '
            f'xsi:type="ovf:OperatingSystemSection_Type"><Info>Guest OS</Info><Description>'
            f'rhel_9x64</Description></Section><Section xsi:type="ovf:VirtualHardwareSection_'
            f'Type"><Info>2 CPU, 4096 Memory</Info>\n      <Item><rasd:Caption>disk1'
            f"</rasd:Caption><rasd:InstanceId>{image}</rasd:InstanceId><rasd:ResourceType>17"
            f"</rasd:ResourceType><rasd:HostResource>{disk}/{image}</rasd:HostResource>"
            f"<rasd:StorageId>{spec.sd}</rasd:StorageId><Type>disk</Type></Item>\n      ")
    tail = "</Section></Content></ovf:Envelope>\n"
    parts, used, i = [head], len(head) + len(tail), 0
    filler = "<Description></Description>"
    while True:
        item = _device(rng, i)
        if used + len(item) + len(filler) > spec.size:
            break
        parts.append(item)
        used += len(item)
        i += 1
    gap = spec.size - used - len(filler)
    if gap < 0:
        raise ValueError(f"an OVF cannot be as small as {spec.size} bytes")
    parts.append(f"<Description>{' ' * gap}</Description>")
    data = "".join(parts) + tail
    return data.encode()


def specs(count: int, domains: list[str], size: int, seed: str) -> list[Spec]:
    """``count`` VMs with UUIDs made from ``seed``, spread round-robin over ``domains``."""
    rng = random.Random(seed)
    return [Spec(_uuid(rng), domains[i % len(domains)], size) for i in range(count)]


def _fetch(member: tarplan.Member, offset: int, length: int) -> bytes:
    data = ovf(member.source)
    return data[offset:offset + length]


def store_plan(sd: str, vms: list[Spec], now: float) -> tarplan.Plan:
    """The engine's tar layout (``tarplan.ovf_store_plan``) for ``vms`` on ``sd``."""
    ovfs = []
    for spec in vms:
        data = ovf(spec)
        ovfs.append((spec.vm, len(data), xxhash.xxh3_128_hexdigest(data), spec))
    plan, _info, _metadata, _manifest = tarplan.ovf_store_plan(
        manifest.java_date(now), sd, ovfs, {spec.vm: 1 for spec in vms[::3]}, int(now))
    return plan


def render(plan: tarplan.Plan) -> Iterator[bytes]:
    return tarplan.render(plan, _fetch)


def write_tar(path: Path, plan: tarplan.Plan) -> str:
    """Write the planned tar to ``path``; return its xxh3-128."""
    h = xxhash.xxh3_128()
    with open(path, "wb") as f:
        for chunk in render(plan):
            h.update(chunk)
            f.write(chunk)
        if f.tell() != plan.total_size:
            raise ValueError(f"the tar is {f.tell()} bytes, planned {plan.total_size}")
    return h.hexdigest()
