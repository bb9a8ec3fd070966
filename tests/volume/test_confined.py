"""A file domain's files are opened below its directory, through no link.

Others may write the directory (an NFS export); what they plant there
(symlinks, hard links, device nodes, FIFOs) must not lead a volume out of
the domain, whether it is there at lookup or appears just before the open.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path
from unittest import mock

import pytest

from tests.conftest import LoopDeviceFactory
from volume import FileVolume, filedata, open_volume
from volume.domains import DomainRegistry
from volume.errors import Forbidden, VolumeError
from volume.filedomain import FileDomain, create_file_domain
from volume.sd import VolumeInfo, open_data

from .test_filedomain import new_id, sd

__all__ = ["sd"]  # a fixture

MiB = 1 << 20
SECRET = b"root:$6$secret-hash:19000:0:99999:7:::\n"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "host-secret"
    path.write_bytes(SECRET)
    return path


@pytest.fixture
def vol(sd: FileDomain) -> VolumeInfo:
    return sd.create_volume(new_id(), new_id(), MiB)


def rel(info: VolumeInfo) -> str:
    return f"images/{info.img_uuid}/{info.vol_uuid}"


def refused(info: VolumeInfo, sd: FileDomain, why: str) -> None:
    """Refused both at lookup and at open (with the record from before)."""
    for attempt in (lambda: sd.lookup(info.img_uuid, info.vol_uuid),
                    lambda: open_data(info).close(),
                    lambda: open_data(info, readonly=True).close()):
        with pytest.raises(Forbidden, match=why):
            attempt()


def test_symlink_to_a_file_outside(sd: FileDomain, vol: VolumeInfo, outside: Path) -> None:
    os.unlink(vol.path)
    os.symlink(outside, vol.path)
    refused(vol, sd, f"^volume {rel(vol)} of a file storage domain is a symbolic link, not "
                     "a regular file: refused, so that it cannot lead out of the domain$")
    with pytest.raises(Forbidden):
        sd.resize_volume(vol.img_uuid, vol.vol_uuid, 2 * MiB)
    assert outside.read_bytes() == SECRET


def test_relative_symlink_inside_the_domain(sd: FileDomain, vol: VolumeInfo) -> None:
    """Even a link that stays inside: the rule is no links, not a judgement."""
    other = sd.create_volume(new_id(), new_id(), MiB)
    os.unlink(vol.path)
    os.symlink(os.path.relpath(other.path, os.path.dirname(vol.path)), vol.path)
    refused(vol, sd, "is a symbolic link")


def test_image_directory_is_a_symlink(sd: FileDomain, vol: VolumeInfo,
                                      tmp_path: Path) -> None:
    image = os.path.dirname(vol.path)
    os.rename(image, tmp_path / "elsewhere")  # data and metadata, outside
    os.symlink(tmp_path / "elsewhere", image)
    why = (f" of a file storage domain is under images/{vol.img_uuid}, which is a "
           "symbolic link, not a directory: refused")
    with pytest.raises(Forbidden, match=f"^volume metadata {rel(vol)}.meta{why}"):
        sd.lookup(vol.img_uuid, vol.vol_uuid)
    with pytest.raises(Forbidden, match=f"^volume {rel(vol)}{why}"):
        open_data(vol)
    assert sd.list_volumes() == []  # skipped, with a warning


def test_volume_is_not_made_in_an_image_directory_symlinked_out(
    sd: FileDomain, vol: VolumeInfo, tmp_path: Path
) -> None:
    """A new volume of an existing image (a snapshot) lands in its directory;
    a host file of the new volume's name there would be removed first."""
    image = os.path.dirname(vol.path)
    elsewhere = tmp_path / "elsewhere"  # a host directory
    elsewhere.mkdir()
    new = new_id()
    (elsewhere / new).write_bytes(SECRET)
    shutil.rmtree(image)
    os.symlink(elsewhere, image)
    with pytest.raises(Forbidden, match=f"^image directory images/{vol.img_uuid} of a file "
                                        "storage domain is a symbolic link, not a directory"):
        sd.create_volume(vol.img_uuid, new, MiB)
    assert os.listdir(elsewhere) == [new]
    assert (elsewhere / new).read_bytes() == SECRET


def test_images_directory_is_a_symlink(sd: FileDomain, vol: VolumeInfo,
                                       tmp_path: Path) -> None:
    images = os.path.join(sd.location[0], "images")
    os.rename(images, tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", images)
    with pytest.raises(Forbidden, match="is under images, which is a symbolic link"):
        open_data(vol)


def test_hard_link_to_a_file_outside(sd: FileDomain, vol: VolumeInfo, outside: Path) -> None:
    os.unlink(vol.path)
    os.link(outside, vol.path)
    refused(vol, sd, f"^volume {rel(vol)} of a file storage domain has 2 hard links, and "
                     "may have only one: refused$")
    reg = DomainRegistry()
    reg.attach(sd)
    with pytest.raises(Forbidden, match=f"^image {rel(vol)} of a file .* has 2 hard links"):
        reg.resolve(vol.path)


def test_symlink_to_a_device(sd: FileDomain, vol: VolumeInfo,
                             loop_device: LoopDeviceFactory) -> None:
    device = loop_device(MiB)
    os.unlink(vol.path)
    os.symlink(device, vol.path)
    refused(vol, sd, "is a symbolic link")


def test_device_node_in_the_domain(sd: FileDomain, vol: VolumeInfo,
                                   loop_device: LoopDeviceFactory) -> None:
    device = loop_device(MiB)
    os.unlink(vol.path)
    os.mknod(vol.path, 0o600 | stat.S_IFBLK, os.stat(device).st_rdev)
    refused(vol, sd, f"^volume {rel(vol)} of a file storage domain is a block device, not "
                     "a regular file")


@pytest.mark.timeout(10)
def test_fifo_is_refused_without_blocking(sd: FileDomain, vol: VolumeInfo) -> None:
    """Data or metadata: a FIFO is never opened, so nothing waits for a writer."""
    os.unlink(vol.path)
    os.mkfifo(vol.path)
    refused(vol, sd, "is a FIFO, not a regular file")
    os.unlink(vol.path + ".meta")
    os.mkfifo(vol.path + ".meta")
    with pytest.raises(Forbidden, match=r"^volume metadata .*\.meta .* is a FIFO"):
        sd.lookup(vol.img_uuid, vol.vol_uuid)


def test_metadata_symlink_is_refused(sd: FileDomain, vol: VolumeInfo, tmp_path: Path) -> None:
    planted = tmp_path / "planted.meta"
    planted.write_bytes(Path(vol.path + ".meta").read_bytes())
    os.unlink(vol.path + ".meta")
    os.symlink(planted, vol.path + ".meta")
    with pytest.raises(Forbidden, match=r"^volume metadata .*\.meta .* is a symbolic link"):
        sd.lookup(vol.img_uuid, vol.vol_uuid)
    assert sd.list_volumes() == []


def test_moved_out_while_opening_is_refused(sd: FileDomain, vol: VolumeInfo,
                                            tmp_path: Path) -> None:
    """The last check: what was opened is still inside the domain."""
    from volume import _confined  # here: the module is what this test checks

    def move_then_open(path: str) -> int:
        os.rename(vol.path, tmp_path / "moved")
        return os.open(path, os.O_RDWR)

    with pytest.raises(Forbidden, match=f"^volume {rel(vol)} of a file storage domain was "
                                        "moved out of the domain while it was being opened"):
        _confined.open_file(sd.location[0], vol.path, "volume", move_then_open)


def test_path_outside_the_domain_is_refused(sd: FileDomain, outside: Path) -> None:
    for path in (str(outside), sd.location[0], f"{sd.location[0]}/images/../domain.json"):
        with pytest.raises(Forbidden, match="is not inside its storage domain's directory"):
            open_volume(path, within=sd.location[0])


def test_regular_volume_opens(sd: FileDomain, vol: VolumeInfo) -> None:
    assert sd.lookup(vol.img_uuid, vol.vol_uuid) == vol
    assert vol.within == sd.location[0]
    volume = open_data(vol)
    try:
        assert isinstance(volume, FileVolume)
        volume.write(0, memoryview(bytes(4096)))
    finally:
        volume.close()
    grown = sd.resize_volume(vol.img_uuid, vol.vol_uuid, 2 * MiB)
    assert os.path.getsize(grown.path) == 2 * MiB


def test_domain_reached_through_a_symlink(tmp_path: Path) -> None:
    """The domain's own location is trusted, symlinks and all (a mount path)."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "mnt").symlink_to(real)
    sd = create_file_domain(str(tmp_path / "mnt"), new_id())
    vol = sd.create_volume(new_id(), new_id(), MiB)
    open_data(vol).close()
    open_volume(str(real / "images" / vol.img_uuid / vol.vol_uuid),
                within=str(tmp_path / "mnt")).close()


# Deleting: the planted name goes, what it leads to stays (the API's side
# is tests/stream/test_planted_delete.py).


def test_a_delete_with_planted_metadata_is_finished_after_a_crash(
    sd: FileDomain, vol: VolumeInfo, outside: Path
) -> None:
    """Never marked (nothing of it is read): a crash after the data went
    leaves the link alone, which a second delete takes."""
    from volume import _confined  # here: the module is what this test checks

    meta = vol.path + ".meta"
    os.unlink(meta)
    os.symlink(outside, meta)
    real = _confined.remove

    def crash_at_metadata(within: str, path: str, what: str) -> str | None:
        if path == meta:
            raise OSError(errno.EIO, "Input/output error")
        return real(within, path, what)

    with mock.patch("volume._confined.remove", crash_at_metadata), \
            pytest.raises(VolumeError):
        sd.delete_volume(vol.img_uuid, vol.vol_uuid)
    assert not os.path.lexists(vol.path) and os.path.islink(meta)
    assert sd.lookup_to_delete(vol.img_uuid, vol.vol_uuid).key == vol.key
    sd.delete_volume(vol.img_uuid, vol.vol_uuid)
    assert not os.path.lexists(os.path.dirname(vol.path))
    assert outside.read_bytes() == SECRET


@pytest.mark.timeout(10)
def test_a_fifo_planted_in_place_of_metadata_is_deleted_unopened(
    sd: FileDomain, vol: VolumeInfo
) -> None:
    os.unlink(vol.path + ".meta")
    os.mkfifo(vol.path + ".meta")
    sd.delete_volume(vol.img_uuid, vol.vol_uuid)
    assert not os.path.lexists(os.path.dirname(vol.path))


def test_a_delete_still_refuses_an_image_directory_symlinked_out(
    sd: FileDomain, vol: VolumeInfo, tmp_path: Path
) -> None:
    """Only a link at the volume's own names is removed: one higher up is
    the way to other files, and nothing is removed through it."""
    image = os.path.dirname(vol.path)
    elsewhere = tmp_path / "elsewhere"
    os.rename(image, elsewhere)
    os.symlink(elsewhere, image)
    for attempt in (sd.lookup_to_delete, sd.delete_volume):
        with pytest.raises(Forbidden, match=f"is under images/{vol.img_uuid}, which is a "
                                            "symbolic link"):
            attempt(vol.img_uuid, vol.vol_uuid)
    assert sorted(os.listdir(elsewhere)) == [vol.vol_uuid, vol.vol_uuid + ".meta"]


def test_lookup_to_delete_of_a_regular_volume_is_its_lookup(
    sd: FileDomain, vol: VolumeInfo
) -> None:
    assert sd.lookup_to_delete(vol.img_uuid.upper(), vol.vol_uuid) == vol
    os.unlink(vol.path)
    with pytest.raises(VolumeError, match="is missing"):  # refused as before
        sd.lookup_to_delete(vol.img_uuid, vol.vol_uuid)


def test_metadata_is_written_in_the_image_directory_reached_through_no_link(
    sd: FileDomain, vol: VolumeInfo, tmp_path: Path
) -> None:
    """The "deleting" mark and every other metadata write went by path: an
    image directory swapped for a link after the read put the file in the
    link's host directory (found by a review, with a race)."""
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    image_dir = Path(vol.path).parent
    shutil.move(image_dir, tmp_path / "moved")
    image_dir.symlink_to(host_dir)
    with pytest.raises(Forbidden):
        sd._write_meta(vol, "deleting")
    assert list(host_dir.iterdir()) == []


def test_a_failed_create_removes_its_data_in_its_own_directory(
    sd: FileDomain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image directory swapped for a link while the volume was made: the
    metadata write refuses it, and the cleanup then removed the data by
    path, through the link: a host file named as the volume went (found by
    a review; a thread swapping the directory during qemu-img won 5 of 5)."""
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    img, vol = new_id(), new_id()
    (host_dir / vol).write_bytes(SECRET)
    real_make = filedata.make

    def make_then_swap(info: VolumeInfo, backing: VolumeInfo | None,
                       dir_fd: int | None = None) -> None:
        real_make(info, backing, dir_fd)
        image_dir = Path(info.path).parent
        image_dir.rename(tmp_path / "moved")
        image_dir.symlink_to(host_dir)

    monkeypatch.setattr(filedata, "make", make_then_swap)
    with pytest.raises(Forbidden):
        sd.create_volume(img, vol, MiB)
    assert (host_dir / vol).read_bytes() == SECRET
    assert list((tmp_path / "moved").iterdir()) == []  # its own data went
