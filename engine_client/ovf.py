"""Read what the updater needs from an oVirt OVF.

An oVirt OVF (``OvfVmWriter``/``OvfTemplateWriter`` output) is an
``Envelope`` whose ``Content`` (``xsi:type="ovf:VirtualSystem_Type"``) holds:

- ``Name``, ``TemplateId`` and ``Origin`` elements (``Origin`` 4 is an
  external VM, which oVirt never writes to OVF stores);
- a ``Section`` of ``xsi:type="ovf:OperatingSystemSection_Type"`` whose
  ``ovf:id`` is the VM or template UUID.  As oVirt's ``OvfParser`` does, an
  OVF whose ``TemplateId`` equals that UUID describes a template;
- the ``VirtualHardwareSection``, where each disk image is an ``Item`` with
  ``rasd:ResourceType`` 17, ``rasd:HostResource`` = ``<disk>/<image>`` and
  ``rasd:StorageId`` = its storage domain;
- a ``DiskSection`` whose ``Disk`` elements carry ``ovf:diskId`` (the image)
  and ``ovf:shareable``;
- an optional ``SnapshotsSection`` of ``Snapshot`` elements (``ovf:id``, ``Type``).

Engines before 4.2 use the namespace ``http://schemas.dmtf.org/ovf/envelope/1``,
later ones the same with a trailing ``/``: names are matched by local name.

The XML is parsed with expat directly and refused if it has a DOCTYPE or
declares entities, so no entity expansion ("billion laughs") or external
entity can happen.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from xml.parsers import expat

from .errors import InvalidInput

XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
DISK_IMAGE = "17"  # OvfHardware.DiskImage
EXTERNAL_ORIGIN = 4  # OriginType.EXTERNAL


class OvfError(InvalidInput):
    pass


@dataclass(frozen=True)
class OvfDisk:
    disk_uuid: str  # the image group: what oVirt calls the disk
    image_uuid: str
    sd_uuid: str | None
    shareable: bool


@dataclass(frozen=True)
class OvfSnapshot:
    uuid: str
    type: str


@dataclass(frozen=True)
class Ovf:
    uuid: str
    name: str
    kind: str  # "vm" or "template"
    origin: int | None
    generation: int | None
    disks: tuple[OvfDisk, ...]
    snapshots: tuple[OvfSnapshot, ...]


def canonical_uuid(value: str | None, what: str) -> str:
    """``value`` as a lower-case canonical UUID, or OvfError naming ``what``."""
    try:
        return str(uuid.UUID((value or "").strip()))
    except ValueError:
        raise OvfError(f"{what} {value!r} is not a UUID") from None


@dataclass
class Doc:
    root: ET.Element
    #: id(element) -> (where its start tag begins, where its end tag begins;
    #: for an empty ``<element/>``, just past it)
    spans: dict[int, tuple[int, int]]


def _refuse(*_: Any) -> Any:
    raise OvfError("DOCTYPE and entity declarations are not allowed in an OVF")


def _qname(name: str) -> str:
    # expat joins namespace and local name with the separator; ET wants {ns}local.
    return "{" + name if "}" in name else name


def build_doc(data: bytes, source: str) -> Doc:
    parser = expat.ParserCreate(namespace_separator="}")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.ExternalEntityRefHandler = _refuse
    builder = ET.TreeBuilder()
    spans: dict[int, tuple[int, int]] = {}
    starts: list[tuple[ET.Element, int]] = []

    def start(name: str, attrs: dict[str, str]) -> None:
        elem = builder.start(_qname(name), {_qname(k): v for k, v in attrs.items()})
        starts.append((elem, parser.CurrentByteIndex))

    def end(_name: str) -> None:
        elem, at = starts.pop()
        spans[id(elem)] = (at, parser.CurrentByteIndex)
        builder.end(elem.tag)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
    except expat.ExpatError as e:
        raise OvfError(f"{source} is not well-formed XML: {expat.errors.messages[e.code]} "
                       f"at line {e.lineno}, column {e.offset}") from None
    except (ValueError, LookupError) as e:  # a declared encoding expat cannot read
        raise OvfError(f"{source} cannot be read: {e}") from None
    return Doc(builder.close(), spans)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def attr(elem: ET.Element, name: str) -> str | None:
    for key, value in elem.attrib.items():
        if _local(key) == name:
            return value
    return None


def children(elem: ET.Element, name: str) -> Iterator[ET.Element]:
    return (c for c in elem if _local(c.tag) == name)


def _text(elem: ET.Element, name: str) -> str | None:
    child = next(children(elem, name), None)
    return None if child is None else (child.text or "").strip()


def sections(content: ET.Element, type_name: str) -> Iterator[ET.Element]:
    for s in children(content, "Section"):
        if (s.get(XSI_TYPE) or "").rpartition(":")[2] == type_name:
            yield s


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def content_of(doc: Doc, source: str) -> ET.Element:
    if _local(doc.root.tag) != "Envelope":
        raise OvfError(f"{source} is not an OVF: its root element is "
                       f"<{_local(doc.root.tag)}>, not <Envelope>")
    found = [*children(doc.root, "Content"), *children(doc.root, "VirtualSystem")]
    if not found:
        raise OvfError(f"{source} has no <Content> (virtual system) element")
    if len(found) > 1:  # the others would be dropped without a word
        raise OvfError(f"{source} has {len(found)} <Content> (virtual system) elements; "
                       "an OVF file describes one VM or template")
    return found[0]


def disk_items(content: ET.Element) -> Iterator[ET.Element]:
    for hw in sections(content, "VirtualHardwareSection_Type"):
        for item in children(hw, "Item"):
            if _text(item, "ResourceType") == DISK_IMAGE:
                yield item


def _entity_uuid(content: ET.Element, source: str) -> str:
    os_section = next(sections(content, "OperatingSystemSection_Type"), None)
    raw = attr(os_section, "id") if os_section is not None else None
    if not raw:
        raw = attr(content, "id")
    if not raw or raw == "out":  # oVirt's <Content ovf:id="out">
        raise OvfError(f"{source} has no VM UUID (no ovf:id on its "
                       "OperatingSystemSection)")
    return canonical_uuid(raw, f"{source}: VM UUID")


def _disks(root: ET.Element, content: ET.Element, source: str) -> tuple[OvfDisk, ...]:
    shareable: dict[str, bool] = {}
    for section in sections(root, "DiskSection_Type"):  # on the Envelope
        for d in children(section, "Disk"):
            image = attr(d, "diskId")
            if image:
                shareable[image.strip().lower()] = (attr(d, "shareable") or "") == "true"
    disks: dict[str, OvfDisk] = {}
    for item in disk_items(content):
        group, sep, image = (_text(item, "HostResource") or "").partition("/")
        if not sep:
            raise OvfError(f"{source}: a disk item's HostResource {group!r} is not "
                           "<disk UUID>/<image UUID>")
        disk = canonical_uuid(group, f"{source}: disk")
        image = canonical_uuid(image, f"{source}: image of disk {disk}")
        sd = _text(item, "StorageId")
        sd = canonical_uuid(sd, f"{source}: storage domain of disk {disk}") if sd else None
        disks[disk] = OvfDisk(disk, image, sd, shareable.get(image, False))
    return tuple(disks.values())


def _snapshots(content: ET.Element, source: str) -> tuple[OvfSnapshot, ...]:
    found: list[OvfSnapshot] = []
    for section in sections(content, "SnapshotsSection_Type"):
        for s in children(section, "Snapshot"):
            sid = canonical_uuid(attr(s, "id"), f"{source}: snapshot")
            if any(f.uuid == sid for f in found):
                raise OvfError(f"{source}: snapshot {sid} is listed twice")
            found.append(OvfSnapshot(sid, _text(s, "Type") or "REGULAR"))
    return tuple(found)


def parse(data: bytes, source: str = "OVF") -> Ovf:
    """The identity, disks and snapshots of an OVF; ``source`` names it in errors."""
    if not data.strip():
        raise OvfError(f"{source} is empty")
    doc = build_doc(data, source)
    content = content_of(doc, source)
    entity = _entity_uuid(content, source)
    name = _text(content, "Name")
    if not name:
        raise OvfError(f"{source} has no <Name> for VM {entity}")
    template_id = _text(content, "TemplateId")
    is_template = (template_id or "").lower() == entity
    return Ovf(
        uuid=entity,
        name=name,
        kind="template" if is_template else "vm",
        origin=_int(_text(content, "Origin")),
        generation=_int(_text(content, "Generation")),
        disks=_disks(doc.root, content, source),
        snapshots=_snapshots(content, source),
    )
