"""Read what the updater needs from an oVirt OVF, and move its disks.

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

import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
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
class _Doc:
    root: ET.Element
    #: id(element) -> (where its start tag begins, where its end tag begins;
    #: for an empty ``<element/>``, just past it)
    spans: dict[int, tuple[int, int]]


def _refuse(*_: Any) -> Any:
    raise OvfError("DOCTYPE and entity declarations are not allowed in an OVF")


def _qname(name: str) -> str:
    # expat joins namespace and local name with the separator; ET wants {ns}local.
    return "{" + name if "}" in name else name


def _build(data: bytes, source: str) -> _Doc:
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
    return _Doc(builder.close(), spans)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _attr(elem: ET.Element, name: str) -> str | None:
    for key, value in elem.attrib.items():
        if _local(key) == name:
            return value
    return None


def _children(elem: ET.Element, name: str) -> Iterator[ET.Element]:
    return (c for c in elem if _local(c.tag) == name)


def _text(elem: ET.Element, name: str) -> str | None:
    child = next(_children(elem, name), None)
    return None if child is None else (child.text or "").strip()


def _sections(content: ET.Element, type_name: str) -> Iterator[ET.Element]:
    for s in _children(content, "Section"):
        if (s.get(XSI_TYPE) or "").rpartition(":")[2] == type_name:
            yield s


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _content(doc: _Doc, source: str) -> ET.Element:
    if _local(doc.root.tag) != "Envelope":
        raise OvfError(f"{source} is not an OVF: its root element is "
                       f"<{_local(doc.root.tag)}>, not <Envelope>")
    content = next(_children(doc.root, "Content"), None)
    if content is None:
        content = next(_children(doc.root, "VirtualSystem"), None)
    if content is None:
        raise OvfError(f"{source} has no <Content> (virtual system) element")
    return content


def _disk_items(content: ET.Element) -> Iterator[ET.Element]:
    for hw in _sections(content, "VirtualHardwareSection_Type"):
        for item in _children(hw, "Item"):
            if _text(item, "ResourceType") == DISK_IMAGE:
                yield item


def _entity_uuid(content: ET.Element, source: str) -> str:
    os_section = next(_sections(content, "OperatingSystemSection_Type"), None)
    raw = _attr(os_section, "id") if os_section is not None else None
    if not raw:
        raw = _attr(content, "id")
    if not raw or raw == "out":  # oVirt's <Content ovf:id="out">
        raise OvfError(f"{source} has no VM UUID (no ovf:id on its "
                       "OperatingSystemSection)")
    return canonical_uuid(raw, f"{source}: VM UUID")


def _disks(root: ET.Element, content: ET.Element, source: str) -> tuple[OvfDisk, ...]:
    shareable: dict[str, bool] = {}
    for section in _sections(root, "DiskSection_Type"):  # on the Envelope
        for d in _children(section, "Disk"):
            image = _attr(d, "diskId")
            if image:
                shareable[image.strip().lower()] = (_attr(d, "shareable") or "") == "true"
    disks: dict[str, OvfDisk] = {}
    for item in _disk_items(content):
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
    found = []
    for section in _sections(content, "SnapshotsSection_Type"):
        for s in _children(section, "Snapshot"):
            sid = canonical_uuid(_attr(s, "id"), f"{source}: snapshot")
            found.append(OvfSnapshot(sid, _text(s, "Type") or "REGULAR"))
    return tuple(found)


def parse(data: bytes, source: str = "OVF") -> Ovf:
    """The identity, disks and snapshots of an OVF; ``source`` names it in errors."""
    if not data.strip():
        raise OvfError(f"{source} is empty")
    doc = _build(data, source)
    content = _content(doc, source)
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


def _tag_end(data: bytes, at: int) -> int:
    """Offset just past the tag that starts at ``at``."""
    return data.index(b">", at) + 1


def _start_tag_end(data: bytes, at: int) -> int:
    """Offset just past the start tag at ``at``; a ``>`` inside a quoted
    attribute value does not end it."""
    quote = 0
    for i in range(at + 1, len(data)):
        c = data[i]
        if quote:
            quote = 0 if c == quote else quote
        elif c in b"\"'":
            quote = c
        elif c == ord(">"):
            return i + 1
    raise ValueError("unterminated tag")


_SHAREABLE = re.compile(rb"""(\s)((?:[\w.-]+:)?shareable\s*=\s*)("[^"]*"|'[^']*')""")
_DISK_ID = re.compile(rb"""\s([\w.-]+:)?diskId\s*=""")


def set_shareable(data: bytes, disk_uuid: str, shareable: bool, source: str = "OVF") -> bytes:
    """``data`` with the ``shareable`` attribute of the disk's ``<Disk>`` in
    the DiskSection set; unchanged when the OVF has no such element.  Only
    that attribute's text changes (or it is added after ``diskId``)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise OvfError(f"{source}: only UTF-8 OVFs can have their disks changed")
    image = next((d.image_uuid for d in parse(data, source).disks
                  if d.disk_uuid == disk_uuid), None)
    doc = _build(data, source)
    found = None
    for section in _sections(doc.root, "DiskSection_Type"):
        for d in _children(section, "Disk"):
            if (_attr(d, "diskId") or "").strip().lower() == image:
                found = d
    if image is None or found is None:
        return data
    start = doc.spans[id(found)][0]
    end = _start_tag_end(data, start)
    tag = data[start:end]
    value = b'"true"' if shareable else b'"false"'
    m = _SHAREABLE.search(tag)
    if m is not None:
        tag = tag[:m.start(3)] + value + tag[m.end(3):]
    else:
        named = _DISK_ID.search(tag)
        prefix = named.group(1) if named is not None and named.group(1) else b""
        at = len(tag) - (2 if tag.endswith(b"/>") else 1)
        tag = tag[:at].rstrip() + b" " + prefix + b"shareable=" + value + tag[at:]
    data = data[:start] + tag + data[end:]
    if next(d.shareable for d in parse(data, source).disks if d.disk_uuid == disk_uuid) \
            != shareable:
        raise OvfError(f"{source}: cannot rewrite the shareable flag of disk {disk_uuid}")
    return data


def set_storage_ids(data: bytes, domains: Mapping[str, str], source: str = "OVF") -> bytes:
    """``data`` with ``rasd:StorageId`` of the given disks set to new domains.

    ``domains`` maps disk UUIDs to storage domain UUIDs.  Only the text of
    those elements changes (or one is added after ``HostResource``), so the
    rest of the document stays byte for byte what the engine wrote.
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise OvfError(f"{source}: only UTF-8 OVFs can have their disks moved")
    doc = _build(data, source)
    edits: list[tuple[int, int, bytes]] = []
    for item in _disk_items(_content(doc, source)):
        host = next(_children(item, "HostResource"))
        disk = canonical_uuid((host.text or "").partition("/")[0], f"{source}: disk")
        sd = domains.get(disk)
        if sd is None:
            continue
        storage = next(_children(item, "StorageId"), None)
        if storage is not None:
            start, end = doc.spans[id(storage)]
            content = _tag_end(data, start)
            if data[content - 2:content] != b"/>":
                edits.append((content, end, sd.encode()))
                continue
            tag = data[start + 1:content - 2].strip()  # <rasd:StorageId/>
            edits.append((start, content, b"<%s>%s</%s>" % (tag, sd.encode(), tag)))
            continue
        start, end = doc.spans[id(host)]
        prefix = data[start + 1:_tag_end(data, start) - 1].split()[0].rpartition(b":")[0]
        tag = prefix + b":StorageId" if prefix else b"StorageId"
        at = _tag_end(data, end)
        edits.append((at, at, b"<%s>%s</%s>" % (tag, sd.encode(), tag)))
    for start, end, text in sorted(edits, reverse=True):
        data = data[:start] + text + data[end:]
    moved = {d.disk_uuid: d.sd_uuid for d in parse(data, source).disks}
    if any(moved.get(disk, sd) != sd for disk, sd in domains.items()):
        raise OvfError(f"{source}: cannot rewrite the storage domains of its disks")
    return data
