"""Realistic oVirt OVFs for tests, shaped like the engine's OvfVmWriter and
OvfTemplateWriter output (4.2+ namespace, with the trailing slash)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine_client.ovfwriter import BLANK, NAMESPACES


@dataclass
class DiskSpec:
    sd: str | None
    disk: str = field(default_factory=lambda: str(uuid.uuid4()))
    image: str = field(default_factory=lambda: str(uuid.uuid4()))
    shareable: bool = False


def _disk_file(d: DiskSpec) -> str:
    return (f'<File ovf:href="{d.disk}/{d.image}" ovf:id="{d.image}" ovf:size="1073741824" '
            f'ovf:description="" ovf:disk_storage_type="IMAGE" ovf:cinder_volume_type=""/>')


def _disk_entry(d: DiskSpec) -> str:
    return (f'<Disk ovf:diskId="{d.image}" ovf:size="1" ovf:actual_size="0" '
            f'ovf:vm_snapshot_id="{uuid.uuid5(uuid.NAMESPACE_OID, d.disk)}" ovf:parentRef="" '
            f'ovf:fileRef="{d.disk}/{d.image}" '
            'ovf:format="http://www.vmware.com/specifications/vmdk.html#sparse" '
            'ovf:volume-format="RAW" ovf:volume-type="Sparse" ovf:disk-interface="VirtIO_SCSI" '
            f'ovf:read-only="false" ovf:shareable="{str(d.shareable).lower()}" '
            'ovf:boot="true" ovf:pass-discard="false" ovf:disk-alias="disk1" '
            'ovf:wipe-after-delete="false"/>')


def _disk_item(d: DiskSpec) -> str:
    storage = f"<rasd:StorageId>{d.sd}</rasd:StorageId>" if d.sd else ""
    return f"""<Item>
        <rasd:Caption>disk1</rasd:Caption>
        <rasd:InstanceId>{d.image}</rasd:InstanceId>
        <rasd:ResourceType>17</rasd:ResourceType>
        <rasd:HostResource>{d.disk}/{d.image}</rasd:HostResource>
        <rasd:Parent>{BLANK}</rasd:Parent>
        <rasd:Template>{BLANK}</rasd:Template>
        <rasd:ApplicationList></rasd:ApplicationList>
        {storage}
        <rasd:StoragePoolId>6e1b4a4e-7f9e-11ee-9d7b-525400a1b2c3</rasd:StoragePoolId>
        <rasd:CreationDate>2024/05/02 10:11:12</rasd:CreationDate>
        <rasd:LastModified>1970/01/01 00:00:00</rasd:LastModified>
        <rasd:last_modified_date>2024/05/02 10:20:00</rasd:last_modified_date>
        <Type>disk</Type>
        <Device>disk</Device>
        <rasd:Address>{{type=drive, bus=0, controller=0, target=0, unit=0}}</rasd:Address>
        <BootOrder>1</BootOrder>
        <IsPlugged>true</IsPlugged>
        <IsReadOnly>false</IsReadOnly>
        <Alias>ua-{d.disk}</Alias>
      </Item>"""


def vm_ovf(entity: str, name: str, disks: Sequence[DiskSpec] = (), template: bool = False,
           snapshots: Sequence[tuple[str, str]] = (), generation: int = 1,
           origin: int = 0, padding: int = 0) -> bytes:
    """An OVF of a VM (or template) with the given disks and snapshots."""
    template_part = (f"<TemplateId>{entity}</TemplateId><Origin>{origin}</Origin>"
                     "<TemplateType>TEMPLATE</TemplateType><IsDisabled>false</IsDisabled>"
                     if template else
                     f"<TemplateId>{BLANK}</TemplateId><TemplateName>Blank</TemplateName>"
                     f"<IsInitilized>true</IsInitilized><Origin>{origin}</Origin>")
    snaps = "".join(
        f'<Snapshot ovf:id="{sid}"><Type>{stype}</Type><Description>s</Description>'
        "<CreationDate>2024/05/02 10:11:12</CreationDate></Snapshot>"
        for sid, stype in snapshots)
    snap_section = (f'<Section xsi:type="ovf:SnapshotsSection_Type">{snaps}</Section>'
                    if snapshots else "")
    filler = f"<Description>{'x' * padding}</Description>" if padding else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<ovf:Envelope {NAMESPACES} ovf:version="4.5.0.0">
  <References>{"".join(_disk_file(d) for d in disks)}</References>
  <NetworkSection><Info>List of networks</Info><Network ovf:name="ovirtmgmt"/></NetworkSection>
  <Section xsi:type="ovf:DiskSection_Type">
    <Info>List of Virtual Disks</Info>{"".join(_disk_entry(d) for d in disks)}
  </Section>
  <Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type">
    <Name>{name}</Name>{filler}
    <CreationDate>2024/05/02 10:11:12</CreationDate>
    <ExportDate>2024/05/03 08:00:00</ExportDate>
    <DeleteProtected>false</DeleteProtected>
    <Generation>{generation}</Generation>
    <ClusterCompatibilityVersion>4.7</ClusterCompatibilityVersion>
    <VmType>1</VmType>
    {template_part}
    <ClusterName>Default</ClusterName>
    <Section ovf:id="{entity}" ovf:required="false" xsi:type="ovf:OperatingSystemSection_Type">
      <Info>Guest Operating System</Info>
      <Description>rhel_9x64</Description>
    </Section>
    <Section xsi:type="ovf:VirtualHardwareSection_Type">
      <Info>2 CPU, 4096 Memory</Info>
      <System><vssd:VirtualSystemType>ENGINE 4.5.0.0</vssd:VirtualSystemType></System>
      <Item>
        <rasd:Caption>2 virtual cpu</rasd:Caption>
        <rasd:Description>Number of virtual CPU</rasd:Description>
        <rasd:InstanceId>1</rasd:InstanceId>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:num_of_sockets>2</rasd:num_of_sockets>
        <rasd:cpu_per_socket>1</rasd:cpu_per_socket>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Caption>4096 MB of memory</rasd:Caption>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:InstanceId>2</rasd:InstanceId>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits>
        <rasd:VirtualQuantity>4096</rasd:VirtualQuantity>
      </Item>
      {"".join(_disk_item(d) for d in disks)}
    </Section>
    {snap_section}
  </Content>
</ovf:Envelope>
""".encode()


def write(directory: Path, entity: str, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{entity}.ovf"
    path.write_bytes(data)
    return path
