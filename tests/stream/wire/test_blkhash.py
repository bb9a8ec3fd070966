from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from ovirt_imageio._internal import blkhash as imageio_blkhash

from stream.wire.blkhash import BlockHash, hash_factory, validate_block_size
from stream.wire.errors import WireError

MiB = 1 << 20


@pytest.mark.parametrize("size", [0, 1, 4 * MiB, 4 * MiB + 1, 9 * MiB - 7])
def test_equals_imageio(tmp_path: Path, size: int) -> None:
    data = os.urandom(size // 2) + bytes(size - size // 2)
    path = tmp_path / "img"
    path.write_bytes(data)
    h = BlockHash()
    for i in range(0, size, 4 * MiB):
        block = data[i : i + 4 * MiB]
        if block == bytes(len(block)):
            h.zero(len(block))
        else:
            h.update(block)
    assert h.result() == imageio_blkhash.checksum(str(path))


def test_zero_shortcut_equals_hashing_zeros() -> None:
    a, b = BlockHash("xxh3_128", MiB), BlockHash("xxh3_128", MiB)
    a.zero(MiB)
    a.zero(100)
    b.update(bytes(MiB))
    b.update(bytes(100))
    assert a.hexdigest() == b.hexdigest()


def test_algorithms() -> None:
    assert hash_factory("sha256")().digest() == hashlib.sha256().digest()
    for bad in ("nope", "shake_128"):
        with pytest.raises(WireError):
            hash_factory(bad)


@pytest.mark.parametrize("size", [MiB - 4096, 17 * MiB, MiB + 1])
def test_block_size_limits(size: int) -> None:
    with pytest.raises(WireError):
        validate_block_size(size)


@pytest.mark.parametrize("algorithm", ["blake2b", "xxh3_128"])
def test_streaming_equals_blockwise(algorithm: str) -> None:
    from stream.wire.blkhash import StreamingBlockHash

    data = os.urandom(3 * MiB + 5) + bytes(9 * MiB) + os.urandom(100)
    whole = BlockHash(algorithm, MiB)
    for i in range(0, len(data), MiB):
        whole.update(data[i : i + MiB])
    s = StreamingBlockHash(algorithm, MiB)
    s.update(data[:1000])
    s.update(data[1000 : 3 * MiB + 5])
    s.zero(9 * MiB)  # whole and partial zero blocks
    s.update(data[12 * MiB + 5 :])
    assert s.finish() == whole.result()
    assert s.position == len(data)


def test_first_difference() -> None:
    from stream.wire.blkhash import StreamingBlockHash, first_difference

    a, b = StreamingBlockHash("xxh3_128", MiB), StreamingBlockHash("xxh3_128", MiB)
    data = bytearray(os.urandom(5 * MiB))
    a.update(data)
    data[3 * MiB + 7] ^= 1
    b.update(data)
    a.finish()
    b.finish()
    assert first_difference(a.digests, b.digests, MiB) == 3 * MiB
    assert first_difference(a.digests, a.digests, MiB) is None
