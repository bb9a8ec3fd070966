"""Write a small oVirt-style OVF for a VM or template the engine creates.

The shape is ``OvfVmWriter``'s (the 4.2+ namespace, ``Content`` of
``ovf:VirtualSystem_Type``), reduced to what the OVF stores and an import
need: the UUID (on the ``OperatingSystemSection``), the name, the template
it came from, CPU and memory, and each disk as a ``References/File``, a
``DiskSection/Disk`` and a hardware ``Item`` of ResourceType 17 whose
``rasd:StorageId`` names its storage domain.  ``ovf.parse`` reads it back.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from xml.sax.saxutils import escape, quoteattr

BLANK = "00000000-0000-0000-0000-000000000000"
GiB = 1 << 30
#: The namespaces oVirt's OVFs declare on their Envelope.
NAMESPACES = " ".join([
    'xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/"',
    'xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/'
    'CIM_ResourceAllocationSettingData"',
    'xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/'
    'CIM_VirtualSystemSettingData"',
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"',
])


@dataclass(frozen=True)
class OvfDiskSpec:
    disk_uuid: str  # the image group
    vol_uuid: str  # oVirt's image id: the volume
    sd_uuid: str
    size: int  # virtual size in bytes
    format: str = "raw"  # raw or qcow2
    allocation: str = "sparse"
    alias: str = ""


@dataclass(frozen=True)
class OvfSpec:
    uuid: str
    name: str
    disks: Sequence[OvfDiskSpec] = ()
    template: bool = False
    #: The template a VM was created from (BLANK when none).
    template_id: str = BLANK
    template_name: str = "Blank"
    cpus: int = 1
    memory_mb: int = 1024
    generation: int = 1


def _date(ts: float) -> str:
    return time.strftime("%Y/%m/%d %H:%M:%S", time.gmtime(ts))


def _file(d: OvfDiskSpec) -> str:
    return (f'<File ovf:href="{d.disk_uuid}/{d.vol_uuid}" ovf:id="{d.vol_uuid}" '
            f'ovf:size="{d.size}" ovf:description="" ovf:disk_storage_type="IMAGE"/>')


def _disk(d: OvfDiskSpec, boot: bool) -> str:
    fmt = "COW" if d.format == "qcow2" else "RAW"
    kind = "Sparse" if d.allocation == "sparse" else "Preallocated"
    return (f'<Disk ovf:diskId="{d.vol_uuid}" ovf:size="{-(-d.size // GiB)}" '
            f'ovf:actual_size="0" ovf:parentRef="" ovf:fileRef="{d.disk_uuid}/{d.vol_uuid}" '
            f'ovf:volume-format="{fmt}" ovf:volume-type="{kind}" '
            f'ovf:disk-interface="VirtIO_SCSI" ovf:read-only="false" ovf:shareable="false" '
            f'ovf:boot="{str(boot).lower()}" ovf:disk-alias={quoteattr(d.alias)} '
            'ovf:wipe-after-delete="false"/>')


def _item(d: OvfDiskSpec, unit: int, pool: str, created: str) -> str:
    return (f"<Item><rasd:Caption>{escape(d.alias)}</rasd:Caption>"
            f"<rasd:InstanceId>{d.vol_uuid}</rasd:InstanceId>"
            "<rasd:ResourceType>17</rasd:ResourceType>"
            f"<rasd:HostResource>{d.disk_uuid}/{d.vol_uuid}</rasd:HostResource>"
            f"<rasd:Parent>{BLANK}</rasd:Parent><rasd:Template>{BLANK}</rasd:Template>"
            f"<rasd:StorageId>{d.sd_uuid}</rasd:StorageId>"
            f"<rasd:StoragePoolId>{pool}</rasd:StoragePoolId>"
            f"<rasd:CreationDate>{created}</rasd:CreationDate>"
            "<Type>disk</Type><Device>disk</Device>"
            f"<rasd:Address>{{type=drive, bus=0, controller=0, target=0, unit={unit}}}"
            f"</rasd:Address><BootOrder>{1 if unit == 0 else 0}</BootOrder>"
            f"<IsPlugged>true</IsPlugged><IsReadOnly>false</IsReadOnly>"
            f"<Alias>ua-{d.disk_uuid}</Alias></Item>")


def write(spec: OvfSpec, pool_id: str = BLANK, now: float | None = None) -> bytes:
    """The OVF of ``spec`` as UTF-8 bytes."""
    created = _date(time.time() if now is None else now)
    name = escape(spec.name)
    if spec.template:
        origin = (f"<TemplateId>{spec.uuid}</TemplateId><Origin>0</Origin>"
                  "<TemplateType>TEMPLATE</TemplateType><IsDisabled>false</IsDisabled>")
    else:
        origin = (f"<TemplateId>{spec.template_id}</TemplateId>"
                  f"<TemplateName>{escape(spec.template_name)}</TemplateName>"
                  "<IsInitilized>true</IsInitilized><Origin>0</Origin>")
    disks = [d if d.alias else replace(d, alias=f"{spec.name}_Disk{i + 1}")
             for i, d in enumerate(spec.disks)]
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<ovf:Envelope {NAMESPACES} ovf:version="4.5.0.0">
  <References>{"".join(_file(d) for d in disks)}</References>
  <Section xsi:type="ovf:NetworkSection_Type"><Info>List of networks</Info></Section>
  <Section xsi:type="ovf:DiskSection_Type"><Info>List of Virtual Disks</Info>{
      "".join(_disk(d, i == 0) for i, d in enumerate(disks))}</Section>
  <Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type">
    <Name>{name}</Name>
    <CreationDate>{created}</CreationDate>
    <ExportDate>{created}</ExportDate>
    <DeleteProtected>false</DeleteProtected>
    <Generation>{spec.generation}</Generation>
    <ClusterCompatibilityVersion>4.7</ClusterCompatibilityVersion>
    <VmType>1</VmType>
    {origin}
    <Section ovf:id="{spec.uuid}" ovf:required="false"
             xsi:type="ovf:OperatingSystemSection_Type">
      <Info>Guest Operating System</Info><Description>other</Description>
    </Section>
    <Section xsi:type="ovf:VirtualHardwareSection_Type">
      <Info>{spec.cpus} CPU, {spec.memory_mb} Memory</Info>
      <System><vssd:VirtualSystemType>ENGINE 4.5.0.0</vssd:VirtualSystemType></System>
      <Item><rasd:Caption>{spec.cpus} virtual cpu</rasd:Caption>
        <rasd:InstanceId>1</rasd:InstanceId><rasd:ResourceType>3</rasd:ResourceType>
        <rasd:num_of_sockets>{spec.cpus}</rasd:num_of_sockets>
        <rasd:cpu_per_socket>1</rasd:cpu_per_socket>
        <rasd:VirtualQuantity>{spec.cpus}</rasd:VirtualQuantity></Item>
      <Item><rasd:Caption>{spec.memory_mb} MB of memory</rasd:Caption>
        <rasd:InstanceId>2</rasd:InstanceId><rasd:ResourceType>4</rasd:ResourceType>
        <rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits>
        <rasd:VirtualQuantity>{spec.memory_mb}</rasd:VirtualQuantity></Item>
      {"".join(_item(d, i, pool_id, created) for i, d in enumerate(disks))}
    </Section>
  </Content>
</ovf:Envelope>
""".encode()
