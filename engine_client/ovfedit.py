"""Rewrite the disks of an OVF in place: their domains and shareable flag.

The engine's XML stays byte for byte what it wrote, but for the text of
the attribute or element changed (or added): the edits are made on the
bytes at the spans the parser recorded (``ovf.build_doc``), and each result
is parsed again to check it says what was asked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .ovf import (
    OvfError,
    attr,
    build_doc,
    canonical_uuid,
    children,
    content_of,
    disk_items,
    parse,
    sections,
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


def _require_utf8(data: bytes, source: str, what: str) -> None:
    """Edits are UTF-8 bytes: refuse UTF-16, with a BOM or without one (then
    its first character, ``<``, comes with a zero byte)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\0" in data[:4]:
        raise OvfError(f"{source}: only UTF-8 OVFs can have their disks {what}")


_SHAREABLE = re.compile(rb"""(\s)((?:[\w.-]+:)?shareable\s*=\s*)("[^"]*"|'[^']*')""")
_DISK_ID = re.compile(rb"""\s([\w.-]+:)?diskId\s*=""")


def set_shareable(data: bytes, disk_uuid: str, shareable: bool, source: str = "OVF") -> bytes:
    """``data`` with the ``shareable`` attribute of the disk's ``<Disk>`` in
    the DiskSection set; unchanged when the OVF has no such element.  Only
    that attribute's text changes (or it is added after ``diskId``)."""
    _require_utf8(data, source, "changed")
    image = next((d.image_uuid for d in parse(data, source).disks
                  if d.disk_uuid == disk_uuid), None)
    doc = build_doc(data, source)
    found = None
    for section in sections(doc.root, "DiskSection_Type"):
        for d in children(section, "Disk"):
            if (attr(d, "diskId") or "").strip().lower() == image:
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
    _require_utf8(data, source, "moved")
    doc = build_doc(data, source)
    edits: list[tuple[int, int, bytes]] = []
    for item in disk_items(content_of(doc, source)):
        host = next(children(item, "HostResource"))
        disk = canonical_uuid((host.text or "").partition("/")[0], f"{source}: disk")
        sd = domains.get(disk)
        if sd is None:
            continue
        storage = next(children(item, "StorageId"), None)
        if storage is not None:
            start, end = doc.spans[id(storage)]
            content = _start_tag_end(data, start)
            if data[content - 2:content] != b"/>":
                edits.append((content, end, sd.encode()))
                continue
            tag = data[start + 1:content - 2].rstrip()  # <rasd:StorageId .../>
            edits.append((start, content, b"<%s>%s</%s>" % (tag, sd.encode(),
                                                             tag.split()[0])))
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
