"""Upload and download against a real daemon; resume through a relay that
cuts the connection once (an injected network fault)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from engine_client.imageclient import Client, TransferError
from engine_client.imagetransfer import download, upload
from tests.relay import TcpRelay
from tests.stream.daemon import Daemon

MiB = 1 << 20


def sparse_image(path: Path, size: int) -> bytes:
    with open(path, "wb") as f:
        f.truncate(size)
        for off in (MiB, size // 2 + 4096, size - 512):
            f.seek(off)
            f.write(os.urandom(min(3 * MiB, size - off)))
    return path.read_bytes()


class CuttingRelay(TcpRelay):
    """Forwards TCP to the daemon; the first connection dies after ``cut`` bytes upstream."""

    def __init__(self, port: int, cut: int) -> None:
        self.cut = cut
        super().__init__(port)

    def _chunk(self, conn: int, down: bool, moved: int, size: int) -> bool:
        return down or conn > 0 or moved < self.cut


def test_upload_then_download(daemon: Daemon, tmp_path: Path) -> None:
    size = 40 * MiB
    src = tmp_path / "src.raw"
    data = sparse_image(src, size)
    target = daemon.images / "up.raw"
    target.write_bytes(b"")
    url = daemon.add_ticket(target, size=size, sparse=True)
    sent: list[int] = []
    with Client(url) as c:
        result = upload(str(src), c, sent.append)
    assert result.data_bytes == sum(sent) < size  # holes never travelled
    # Check sparseness before any buffered read: ext4 reports cached pages
    # of unwritten ranges as data.
    assert os.stat(target).st_blocks * 512 < size
    back = tmp_path / "back.raw"
    with Client(url) as c:
        download(c, str(back))
    assert os.stat(back).st_blocks * 512 < size  # the download stayed sparse
    assert back.read_bytes() == data
    assert target.read_bytes() == data


def test_download_through_a_symlink_replaces_the_file_it_names(
    daemon: Daemon, tmp_path: Path
) -> None:
    size = 4 * MiB
    data = os.urandom(size)
    target = daemon.images / "linked.raw"
    target.write_bytes(data)
    url = daemon.add_ticket(target, size=size)
    (tmp_path / "old.raw").write_bytes(b"old")
    link = tmp_path / "link.raw"
    link.symlink_to("old.raw")
    with Client(url) as c:
        download(c, str(link))
    assert link.is_symlink()  # the link stays; the file it names is replaced
    assert (tmp_path / "old.raw").read_bytes() == data
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with Client(url) as c, pytest.raises(ValueError, match="not a regular file"):
        download(c, str(fifo))
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_upload_resumes_after_a_broken_connection(daemon: Daemon, tmp_path: Path) -> None:
    size = 16 * MiB
    src = tmp_path / "dense.raw"
    data = os.urandom(size)
    src.write_bytes(data)
    target = daemon.images / "resume.raw"
    target.write_bytes(b"")
    url = daemon.add_ticket(target, size=size)
    progress: list[int] = []
    with CuttingRelay(daemon.port, cut=5 * MiB) as relay, Client(relay.via(url)) as c:
        result = upload(str(src), c, progress.append)
    assert result.retries == 1
    assert sum(progress) == size  # progress taken back for the broken attempt
    assert target.read_bytes() == data


def test_download_resumes_after_a_broken_connection(daemon: Daemon, tmp_path: Path) -> None:
    size = 12 * MiB
    image = daemon.images / "dl.raw"
    data = os.urandom(size)
    image.write_bytes(data)
    url = daemon.add_ticket(image, ops=["read"])
    back = tmp_path / "dl.raw"
    # The first request never completes.
    with CuttingRelay(daemon.port, cut=1) as relay, Client(relay.via(url)) as c:
        result = download(c, str(back))
    assert result.retries >= 1
    assert back.read_bytes() == data


def test_checksum_mismatch_is_reported(daemon: Daemon, tmp_path: Path) -> None:
    size = 2 * MiB
    image = daemon.images / "changing.raw"
    image.write_bytes(os.urandom(size))
    url = daemon.add_ticket(image, ops=["read", "write"])
    back = tmp_path / "x.raw"

    def corrupt(n: int) -> None:
        # The image changes on the server while it is being downloaded.
        with open(image, "r+b") as f:
            f.write(b"changed")

    with pytest.raises(TransferError, match="checksums differ"), Client(url) as c:
        download(c, str(back), corrupt)


def test_bad_url_and_unreachable_host(tmp_path: Path) -> None:
    with pytest.raises(TransferError, match="not an http"):
        Client("ftp://x/images/t")
    src = tmp_path / "f"
    src.write_bytes(b"x")
    with pytest.raises(TransferError, match="connection failed"), \
            Client("http://127.0.0.1:9/images/t", retries=1) as c:
        upload(str(src), c)


class DeadAfterRelay(TcpRelay):
    """Every answer from the daemon dies after ``cut`` bytes: the download
    can never finish, whatever it retries."""

    def __init__(self, port: int, cut: int) -> None:
        self.cut = cut
        super().__init__(port)

    def _chunk(self, conn: int, down: bool, moved: int, size: int) -> bool:
        return not down or moved + size <= self.cut


def test_a_failed_download_keeps_the_old_file(daemon: Daemon, tmp_path: Path) -> None:
    image = daemon.images / "keep.raw"
    image.write_bytes(os.urandom(8 * MiB))
    url = daemon.add_ticket(image, ops=["read"])
    old = tmp_path / "disk.raw"
    old.write_bytes(b"the last good copy")
    old.chmod(0o600)
    with DeadAfterRelay(daemon.port, cut=MiB) as relay, \
            Client(relay.via(url), retries=2) as c, \
            pytest.raises(TransferError, match="3 times"):
        download(c, str(old))
    assert old.read_bytes() == b"the last good copy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.raw"]  # no .part left
    with Client(url) as c:  # and a download that succeeds replaces it, mode kept
        download(c, str(old))
    assert old.read_bytes() == image.read_bytes()
    assert old.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.raw"]


@pytest.mark.parametrize("direction", ["upload", "download"])
def test_a_failing_progress_callback_is_not_a_network_error(
    daemon: Daemon, tmp_path: Path, direction: str
) -> None:
    """The progress callback writes to stdout; its BrokenPipeError (``| head``)
    was taken for a broken connection: retried with backoff, and a download
    at the end of its range then asked for bytes past it (416, 'the
    download failed'), an upload failed after 6 tries ('the connection
    failed').  It is raised at once, as a failed local write is."""
    size = 4 * MiB
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(size))
    target = daemon.images / f"progress-{direction}.raw"
    target.write_bytes(src.read_bytes() if direction == "download" else b"")
    url = daemon.add_ticket(target, size=size)
    moved = [0]

    def progress(n: int) -> None:
        moved[0] += n
        if moved[0] >= size:  # the reader left as the last chunk came
            raise BrokenPipeError(32, "Broken pipe")

    with Client(url, retries=2) as c, pytest.raises(BrokenPipeError):
        if direction == "upload":
            upload(str(src), c, progress)
        else:
            download(c, str(tmp_path / "back.raw"), progress)
    assert c.retries == 0
