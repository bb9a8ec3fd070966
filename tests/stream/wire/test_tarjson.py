"""info.json and metadata.json are kept and parsed (on the daemon's event
loop): no bigger, and with no more JSON values, than the entries the store
may hold need.  16 MiB of ``{},`` in info.json took 300 MiB and 2 s."""

from __future__ import annotations

import tarfile
import tracemalloc
import uuid

import pytest

from stream.wire import strictjson
from stream.wire.manifest import INFO_NAME, METADATA_NAME, build_store_info
from stream.wire.tarread import BadTar, OvfTarReader

MiB = 1 << 20
EOF = bytes(1024)
HEAD = b'{"Last Updated": "Wed Jul 01 11:43:07 UTC 2020", "Storage Domains": [], "x": ['
DIGEST = "0123456789abcdef0123456789abcdef"


def member(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info.tobuf(format=tarfile.USTAR_FORMAT) + data + bytes(-len(data) % 512)


def filled(filler: bytes, size: int) -> bytes:
    """An info.json of about ``size`` bytes: oVirt's keys and a list of ``filler``."""
    return (HEAD + filler * ((size - len(HEAD)) // len(filler)))[:-1] + b"]}"


def feed(blob: bytes, max_entries: int = 100_000) -> OvfTarReader:
    reader = OvfTarReader(max_total=len(blob) + 4 * MiB, max_entries=max_entries)
    reader.feed(blob)
    return reader


@pytest.mark.parametrize("filler", [b"{},", b"[],", b"0,"])
def test_sixteen_mib_of_tiny_values_is_refused_at_the_header(filler: bytes) -> None:
    """The reviewer's info.json: within the former 16 MiB limit, beyond what
    100,000 entries need (156 bytes each)."""
    info = filled(filler, 16 * MiB - 200)
    with pytest.raises(BadTar, match=r"'info.json' at offset 0: \d+ bytes exceed the limit "
                                     r"of 16065536"):
        feed(member(INFO_NAME, info) + EOF)


@pytest.mark.parametrize("name", [INFO_NAME, METADATA_NAME])
@pytest.mark.parametrize("filler", [b"{},", b"[],", b"0,", b'{"a":[]},'])
def test_tiny_values_beyond_the_entries_are_refused_unparsed(name: str, filler: bytes) -> None:
    """2 MiB of them fit the byte limit, but not the values 100,000
    entries need (4 each): refused before a Python object is made for one."""
    data = filled(filler, 2 * MiB)
    first = b"" if name == INFO_NAME else member(INFO_NAME, filled(b"0,", 100))
    blob = first + member(name, data) + EOF
    tracemalloc.start()
    try:
        with pytest.raises(BadTar, match=rf"'{name}' \(data at offset \d+\): up to \d+ JSON "
                                         "values, more than the 401024 that 100000 entries need"):
            feed(blob)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The data and a copy or two; the parse would have taken 20 to 40 MiB.
    assert peak < 4 * len(data), peak


def test_the_bounds_follow_max_entries() -> None:
    entries = [(f"{uuid.uuid4()}.ovf", 100, DIGEST) for _ in range(9)]
    info = build_store_info("x", [str(uuid.uuid4())], entries)
    reader = feed(member(INFO_NAME, info) + EOF, max_entries=10)  # parsed: 9 to come
    with pytest.raises(BadTar, match="9 entries of the manifest are missing"):
        reader.finish()
    with pytest.raises(BadTar, match="more than the 1064 that 10 entries need"):
        feed(member(INFO_NAME, filled(b"{},", 3000)), max_entries=10)
    with pytest.raises(BadTar, match="exceed the limit of 67136"):
        feed(member(INFO_NAME, filled(b" ", 70_000)), max_entries=10)


def test_a_manifest_of_the_most_entries_is_accepted() -> None:
    """100,000 entries (info.json and 99,999 listed): 15.6 MB, 400,000 values."""
    entries = [(f"{uuid.uuid4()}.ovf", 64 * MiB - i, DIGEST) for i in range(99_999)]
    info = build_store_info("Wed Jul 01 11:43:07 UTC 2020", [str(uuid.uuid4())], entries)
    reader = feed(member(INFO_NAME, info) + EOF)
    with pytest.raises(BadTar, match="99999 entries of the manifest are missing"):
        reader.finish()


def values(obj: object) -> int:
    if isinstance(obj, dict):
        return 1 + sum(values(v) for v in obj.values())
    if isinstance(obj, list):
        return 1 + sum(values(v) for v in obj)
    return 1


@pytest.mark.parametrize("text", [
    b"0", b"[]", b"{}", b"[[]]", b'{"a": {}}', b'[0, [1, {"b": [2, 3]}], "x"]',
    b'{"a": 1, "b": [{}, {}], "c": {"d": [[], [0]]}}', b' [ "a" , "b" ] ',
])
def test_value_bound_is_at_least_the_values(text: bytes) -> None:
    assert strictjson.value_bound(text) >= values(strictjson.loads(text))


def test_value_bound_of_a_manifest_is_four_an_entry() -> None:
    entries = [(f"{uuid.uuid4()}.ovf", 100, DIGEST) for _ in range(50)]
    info = build_store_info("x", [str(uuid.uuid4())], entries)
    assert strictjson.value_bound(info) == 4 * 50 + 8  # and oVirt's keys, one domain
