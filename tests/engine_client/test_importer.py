from __future__ import annotations

import os
import sqlite3
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from engine_client import importer
from engine_client.cache import Cache
from engine_client.errors import InvalidInput
from engine_client.importer import import_dir, parse_disk_domains
from engine_client.ovf import Ovf, OvfError, parse
from engine_client.schema import DB_NAME

from .ovfs import DiskSpec, vm_ovf, write

MAX = 1 << 20


def test_import_a_directory(cache: Cache, add_domain: Callable[..., str], tmp_path: Path) -> None:
    sd = add_domain()
    d = tmp_path / "ovfs"
    vms = sorted(str(uuid.uuid4()) for _ in range(3))
    for i, vm in enumerate(vms):
        write(d, vm, vm_ovf(vm, f"vm{i}", [DiskSpec(sd)] if i else []))
    (d / "notes.txt").write_text("not an OVF, not looked at")
    done = import_dir(cache, str(d), MAX)
    assert [(i.uuid, i.action) for i in done] == [(vm, "added") for vm in vms]
    assert {e.uuid for e in cache.entities()} == set(vms)


@pytest.mark.parametrize("content, message", [
    pytest.param(b"hello", "is not well-formed XML", id="not-xml"),
    pytest.param(b"<Envelope><Content><Name>x</Name></Content></Envelope>", "has no VM UUID",
                 id="no-uuid"),
])
def test_one_bad_file_imports_nothing(cache: Cache, add_domain: Callable[..., str],
                                      tmp_path: Path, content: bytes, message: str) -> None:
    sd = add_domain()
    d = tmp_path / "ovfs"
    good = str(uuid.uuid4())
    write(d, good, vm_ovf(good, "good", [DiskSpec(sd)]))
    (d / "zz-bad.ovf").write_bytes(content)
    with pytest.raises(OvfError, match=message) as e:
        import_dir(cache, str(d), MAX)
    assert str(e.value).startswith(str(d / "zz-bad.ovf"))
    assert cache.entities() == []


def test_directory_problems(cache: Cache, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"cannot read the directory .*: No such file"):
        import_dir(cache, str(tmp_path / "missing"), MAX)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match=r"holds no \.ovf files"):
        import_dir(cache, str(tmp_path / "empty"), MAX)
    vm = str(uuid.uuid4())
    write(tmp_path / "big", vm, vm_ovf(vm, "x", padding=2000))
    with pytest.raises(InvalidInput, match="is larger than 1000 bytes"):
        import_dir(cache, str(tmp_path / "big"), 1000)
    (tmp_path / "twice" / "copy.ovf").parent.mkdir()
    (tmp_path / "twice" / "copy.ovf").write_bytes(vm_ovf(vm, "x"))
    write(tmp_path / "twice", vm, vm_ovf(vm, "x"))
    with pytest.raises(InvalidInput, match=f"describe the same VM {vm}"):
        import_dir(cache, str(tmp_path / "twice"), MAX)


def test_domain_overrides(cache: Cache, add_domain: Callable[..., str], tmp_path: Path) -> None:
    a, b, c = add_domain(), add_domain(), add_domain()
    vm, d1, d2 = str(uuid.uuid4()), DiskSpec(a), DiskSpec(None)
    write(tmp_path / "o", vm, vm_ovf(vm, "x", [d1, d2]))
    import_dir(cache, str(tmp_path / "o"), MAX, default_domain=b,
               disk_domains=parse_disk_domains([f"{d1.disk}={c}"]))
    assert {d.disk_uuid: d.sd_uuid for d in cache.disks(vm)} == {d1.disk: c, d2.disk: b}
    source = cache.ovf(vm)
    assert source is not None
    assert {d.disk_uuid: d.sd_uuid for d in parse(source).disks} == {d1.disk: c, d2.disk: b}
    with pytest.raises(InvalidInput, match=r"names disk .* which no OVF"):
        import_dir(cache, str(tmp_path / "o"), MAX,
                   disk_domains={str(uuid.uuid4()): a})
    with pytest.raises(InvalidInput, match="takes DISK=DOMAIN"):
        parse_disk_domains(["abc"])


def test_files_are_parsed_unlocked_and_their_bytes_dropped(
        cache: Cache, add_domain: Callable[..., str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file's bytes were kept until all were read (20,000 OVFs of
    20 KiB: 531 MiB); then, stored as read, they were parsed holding the
    cache's write lock (22 s), and other writers gave up after 10 s.  The
    bytes of a file must be gone once it is parsed or stored, and no write
    lock held while files are parsed."""
    sd = add_domain()
    vms = sorted(str(uuid.uuid4()) for _ in range(20))
    for i, vm in enumerate(vms):
        write(tmp_path / "ovfs", vm, vm_ovf(vm, f"vm{i}", [DiskSpec(sd)]))

    class Bytes(bytearray):
        pass  # bytes can have no weak references, even subclassed

    refs: list[weakref.ref[Bytes]] = []
    most = 0
    real_read = importer._read

    def counting_read(path: str, limit: int) -> bytes:
        nonlocal most
        data = Bytes(real_read(path, limit))
        refs.append(weakref.ref(data))
        most = max(most, sum(r() is not None for r in refs))
        return cast(bytes, data)

    def unlocked_parse(data: bytes, source: str = "OVF") -> Ovf:
        other = sqlite3.connect(os.path.join(cache.state_dir, DB_NAME), timeout=0)
        try:
            other.execute("BEGIN IMMEDIATE")  # "database is locked" if the import holds it
            other.rollback()
        finally:
            other.close()
        return parse(data, source)

    monkeypatch.setattr(importer, "_read", counting_read)
    monkeypatch.setattr(importer, "parse", unlocked_parse)
    done = import_dir(cache, str(tmp_path / "ovfs"), MAX)
    assert [(i.uuid, i.action) for i in done] == [(vm, "added") for vm in vms]
    assert most <= 2, f"the bytes of {most} files were alive at once"


def test_a_file_changed_between_parse_and_store_imports_nothing(
        cache: Cache, add_domain: Callable[..., str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    sd = add_domain()
    vms = sorted(str(uuid.uuid4()) for _ in range(3))
    for i, vm in enumerate(vms):
        write(tmp_path / "ovfs", vm, vm_ovf(vm, f"vm{i}", [DiskSpec(sd)]))
    real = importer.read_dir

    def then_change(*a: Any) -> Any:
        parsed = real(*a)
        write(tmp_path / "ovfs", vms[2], vm_ovf(vms[2], "renamed", [DiskSpec(sd)]))
        return parsed

    monkeypatch.setattr(importer, "read_dir", then_change)
    with pytest.raises(InvalidInput, match="changed while it was imported"):
        import_dir(cache, str(tmp_path / "ovfs"), MAX)
    assert cache.entities() == []


def test_which_error_an_import_reports(cache: Cache, add_domain: Callable[..., str],
                                       tmp_path: Path) -> None:
    """Files are stored as they are read, but the error is the one of a
    whole read first: a file that cannot be read anywhere, then a
    --disk-domain that names no disk, then a --domain that is not a UUID,
    then the first file the cache refuses."""
    sd, d = add_domain(), tmp_path / "ovfs"
    vm, other = str(uuid.uuid4()), str(uuid.uuid4())
    write(d, "a" + vm[1:], vm_ovf(vm, "unknown-domain", [DiskSpec(str(uuid.uuid4()))]))
    write(d, "b" + other[1:], vm_ovf(other, "fine", [DiskSpec(sd)]))
    stray = {str(uuid.uuid4()): sd}
    with pytest.raises(InvalidInput, match="which is not known") as refused:
        import_dir(cache, str(d), MAX)
    assert str(refused.value).startswith(str(d / f"a{vm[1:]}.ovf: disk "))
    with pytest.raises(InvalidInput, match="storage domain 'nowhere' is not a UUID"):
        import_dir(cache, str(d), MAX, "nowhere")
    for domain in (None, "nowhere"):
        with pytest.raises(InvalidInput, match=r"names disk .* which no OVF"):
            import_dir(cache, str(d), MAX, domain, disk_domains=stray)
    (d / "zz-bad.ovf").write_bytes(b"hello")
    with pytest.raises(OvfError, match="is not well-formed XML"):
        import_dir(cache, str(d), MAX, "nowhere", disk_domains=stray)
    (d / "zz-bad.ovf").write_bytes(vm_ovf(other, "copy"))
    with pytest.raises(InvalidInput, match=f"describe the same VM {other}"):
        import_dir(cache, str(d), MAX)
    assert cache.entities() == []
