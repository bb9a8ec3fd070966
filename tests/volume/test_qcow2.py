"""qcow2 headers that name another file are refused before qemu-img opens
them (volume/qcow2.py).  Images are made by the real qemu-img, then
edited where qemu-img would not write such a header."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest

from volume import qcow2


def check(path: str, parent: str | None) -> None:
    """``qcow2.check_fd`` of the image at ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        qcow2.check_fd(fd, os.path.basename(path), parent)
    finally:
        os.close(fd)


def make(path: Path, *options: str, size: str = "1M") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *options, str(path), size],
                   check=True)
    return path


def test_a_base_and_a_child_naming_its_parent_pass(tmp_path: Path) -> None:
    make(tmp_path / "base")
    make(tmp_path / "child", "-b", "base", "-F", "qcow2")
    make(tmp_path / "v2", "-o", "compat=0.10")
    check(str(tmp_path / "base"), None)
    check(str(tmp_path / "child"), "base")
    check(str(tmp_path / "v2"), None)


@pytest.mark.parametrize("options,parent,problem", [
    (("-b", "/etc/hostname", "-F", "raw"), None,
     "it names a backing file ('/etc/hostname') but the volume has no parent"),
    (("-b", "/etc/hostname", "-F", "raw"), "parent-uuid",
     "its backing file is '/etc/hostname', not its parent volume parent-uuid"),
    (("-o", "compat=0.10", "-b", "/etc/hostname", "-F", "raw"), None,
     "it names a backing file ('/etc/hostname') but the volume has no parent"),
    (("-o", "data_file={victim},data_file_raw=on"), None,
     "it keeps its data in an external data file"),
])
def test_headers_naming_other_files_are_refused(
        tmp_path: Path, options: tuple[str, ...], parent: str | None, problem: str) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"host file")
    image = make(tmp_path / "image", *(o.format(victim=victim) for o in options))
    victim.write_bytes(b"host file")  # qemu-img create made it the data file
    with pytest.raises(qcow2.UnsafeImage, match=r"^volume image is refused: ") as e:
        check(str(image), parent)
    assert str(e.value).endswith(problem)
    assert e.value.http_status == 422
    assert victim.read_bytes() == b"host file"


def _header_extensions(path: Path) -> int:
    return int(struct.unpack(">I", path.read_bytes()[100:104])[0])


def test_a_data_file_extension_without_its_feature_bit_is_refused(tmp_path: Path) -> None:
    image = make(tmp_path / "image")
    data = bytearray(image.read_bytes())
    at = _header_extensions(image)
    name = b"/etc/shadow"
    ext = struct.pack(">II", qcow2.EXT_DATA_FILE, len(name)) + name + bytes(-len(name) % 8)
    data[at:at] = ext  # in front of qemu-img's own extensions
    del data[len(data) - len(ext):]  # the file keeps its clusters where they were
    image.write_bytes(bytes(data))
    assert qcow2.header_problem(bytes(data[:65536]), None) == "it names an external data file"


@pytest.mark.parametrize("edit,problem", [
    (lambda d: d.__setitem__(slice(0, 4), b"QFI\0"), "it does not start with a qcow2 header"),
    (lambda d: d.__setitem__(slice(4, 8), struct.pack(">I", 4)), "qcow2 version 4 is not 2 or 3"),
    (lambda d: d.__setitem__(slice(20, 24), struct.pack(">I", 30)),
     "its qcow2 header has an invalid cluster size or is cut short"),
    (lambda d: d.__setitem__(slice(8, 20), struct.pack(">QI", 65530, 100)),
     "its backing file name lies outside the first cluster"),
    (lambda d: d.__setitem__(slice(100, 104), struct.pack(">I", 65532)),
     "its header extensions do not end within the first cluster"),
])
def test_damaged_headers_are_refused(tmp_path: Path, edit: object, problem: str) -> None:
    image = make(tmp_path / "image")
    data = bytearray(image.read_bytes()[:65536])
    edit(data)  # type: ignore[operator]
    assert qcow2.header_problem(bytes(data), None) == problem


def test_a_raw_image_is_not_qcow2(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.write_bytes(bytes(1 << 20))
    with pytest.raises(qcow2.UnsafeImage, match="does not start with a qcow2 header"):
        check(str(raw), None)
