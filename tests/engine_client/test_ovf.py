from __future__ import annotations

import difflib
import uuid
from pathlib import Path

import pytest

from engine_client.ovf import OvfError, parse
from engine_client.ovfedit import set_shareable, set_storage_ids

from .ovfs import DiskSpec, vm_ovf

DATA = Path(__file__).parent / "data"
VM_41 = "0c9f6e3a-5d2b-4c1e-8f7a-6b5c4d3e2f10"
DISK_41 = "5b4b6b5e-24e7-4a09-9f35-3cd1e0c4f0d1"


def test_vm_with_disks_and_snapshots() -> None:
    sd = str(uuid.uuid4())
    vm, snap = str(uuid.uuid4()), str(uuid.uuid4())
    disks = [DiskSpec(sd), DiskSpec(sd, shareable=True)]
    ovf = parse(vm_ovf(vm, "db01", disks, snapshots=[(snap, "ACTIVE")], generation=4))
    assert (ovf.uuid, ovf.name, ovf.kind, ovf.origin, ovf.generation) == (vm, "db01", "vm", 0, 4)
    assert [(d.disk_uuid, d.image_uuid, d.sd_uuid, d.shareable) for d in ovf.disks] == [
        (disks[0].disk, disks[0].image, sd, False), (disks[1].disk, disks[1].image, sd, True)]
    assert [(s.uuid, s.type) for s in ovf.snapshots] == [(snap, "ACTIVE")]


def test_template_is_told_by_its_template_id() -> None:
    tpl = str(uuid.uuid4())
    assert parse(vm_ovf(tpl, "rhel9-base", [DiskSpec(str(uuid.uuid4()))], template=True)).kind \
        == "template"


def test_pre_4_2_namespace_and_upper_case_uuids() -> None:
    ovf = parse((DATA / "vm-4.1.ovf").read_bytes(), "vm-4.1.ovf")
    assert (ovf.uuid, ovf.name, ovf.kind, ovf.generation) == (VM_41, "web01", "vm", 7)
    (disk,) = ovf.disks
    assert (disk.disk_uuid, disk.sd_uuid, disk.shareable) == (DISK_41, None, False)
    assert [s.type for s in ovf.snapshots] == ["ACTIVE"]


@pytest.mark.parametrize("data, message", [
    pytest.param(b"", "is empty", id="empty"),
    pytest.param(b"VM web01, 2 CPUs", "is not well-formed XML: syntax error at line 1",
                 id="not-xml"),
    pytest.param(b"<ovf:Envelope xmlns:ovf='x'><Content>", "is not well-formed XML",
                 id="truncated"),
    pytest.param(b"<domain type='kvm'><name>x</name></domain>",
                 "is not an OVF: its root element is <domain>", id="libvirt-xml"),
    pytest.param(b"<Envelope><References/></Envelope>", "has no <Content>", id="no-content"),
    pytest.param(b"<Envelope><Content ovf:id='out' xmlns:ovf='o'><Name>a</Name></Content>"
                 b"</Envelope>", "has no VM UUID", id="no-uuid"),
    pytest.param(b"<Envelope xmlns:ovf='o' xmlns:xsi='http://www.w3.org/2001/XMLSchema-instance'>"
                 b"<Content><Section ovf:id='nope' xsi:type='ovf:OperatingSystemSection_Type'/>"
                 b"</Content></Envelope>", "VM UUID 'nope' is not a UUID", id="bad-uuid"),
])
def test_bad_ovf_is_refused_with_its_name(data: bytes, message: str) -> None:
    with pytest.raises(OvfError, match=message) as e:
        parse(data, "vm7.ovf")
    assert str(e.value).startswith("vm7.ovf")


def test_no_name() -> None:
    data = vm_ovf(str(uuid.uuid4()), "x").replace(b"<Name>x</Name>", b"")
    with pytest.raises(OvfError, match="has no <Name>"):
        parse(data, "a.ovf")


def test_bad_host_resource() -> None:
    d = DiskSpec(str(uuid.uuid4()))
    data = vm_ovf(str(uuid.uuid4()), "x", [d]).replace(f"{d.disk}/{d.image}".encode(), b"junk")
    with pytest.raises(OvfError, match="HostResource 'junk' is not"):
        parse(data, "a.ovf")


@pytest.mark.parametrize("doc", [
    pytest.param(b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                 b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><Envelope>&lol2;</Envelope>',
                 id="billion-laughs"),
    pytest.param(b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                 b"<Envelope>&x;</Envelope>", id="external-entity"),
    pytest.param(b'<!DOCTYPE Envelope SYSTEM "http://example.com/ovf.dtd"><Envelope/>',
                 id="external-dtd"),
])
def test_doctype_and_entities_are_refused(doc: bytes) -> None:
    with pytest.raises(OvfError, match="DOCTYPE and entity declarations are not allowed"):
        parse(doc, "evil.ovf")


def test_move_disk_changes_only_its_storage_id() -> None:
    old, new = str(uuid.uuid4()), str(uuid.uuid4())
    disks = [DiskSpec(old), DiskSpec(old)]
    data = vm_ovf(str(uuid.uuid4()), "x", disks)
    moved = set_storage_ids(data, {disks[1].disk: new})
    assert [d.sd_uuid for d in parse(moved).disks] == [old, new]
    changed = [line for line in difflib.ndiff(data.decode().splitlines(),
                                              moved.decode().splitlines())
               if line.startswith(("-", "+"))]
    assert changed == [f"-         <rasd:StorageId>{old}</rasd:StorageId>",
                       f"+         <rasd:StorageId>{new}</rasd:StorageId>"]


def test_move_disk_without_storage_id() -> None:
    sd = str(uuid.uuid4())
    data = (DATA / "vm-4.1.ovf").read_bytes()  # <rasd:StorageId/>
    moved = set_storage_ids(data, {DISK_41: sd})
    assert b"<rasd:StorageId>" + sd.encode() + b"</rasd:StorageId>" in moved
    assert parse(moved).disks[0].sd_uuid == sd
    d = DiskSpec(None)  # no element at all
    moved = set_storage_ids(vm_ovf(str(uuid.uuid4()), "x", [d]), {d.disk: sd})
    assert parse(moved).disks[0].sd_uuid == sd


def test_shareable_changes_only_its_attribute() -> None:
    sd = str(uuid.uuid4())
    disks = [DiskSpec(sd), DiskSpec(sd)]
    data = vm_ovf(str(uuid.uuid4()), "x", disks)
    changed = set_shareable(data, disks[1].disk, True)
    assert [d.shareable for d in parse(changed).disks] == [False, True]
    # One attribute value, false -> true, and nothing else.
    at = next(i for i, (a, b) in enumerate(zip(data, changed, strict=False)) if a != b)
    assert changed[at - 11:at + 5] == b'shareable="true"'
    assert data[:at] + b'true"' + data[at + 6:] == changed
    assert set_shareable(changed, disks[1].disk, False) == data
    # The OVF of engine 4.1, its Disk element as that engine wrote it.
    old = (DATA / "vm-4.1.ovf").read_bytes()
    flag = not parse(old).disks[0].shareable
    assert parse(set_shareable(old, DISK_41, flag)).disks[0].shareable is flag


def test_move_nothing_is_identity() -> None:
    data = vm_ovf(str(uuid.uuid4()), "x", [DiskSpec(str(uuid.uuid4()))])
    assert set_storage_ids(data, {str(uuid.uuid4()): str(uuid.uuid4())}) == data
