"""The JSON entries of an OVF_STORE tar: ``info.json`` and ``metadata.json``.

oVirt's engine writes ``info.json`` first, with ``"Last Updated"`` (Java
``Date.toString()``) and ``"Storage Domains"`` (``[{"uuid": ...}]``), and
``metadata.json`` after the OVFs, with ``{"VM Status": {uuid: int}}``
(ovirt-storage.md §1.5).  Sluice senders add to ``info.json`` a manifest of
every entry that follows it::

    "Manifest": {"algorithm": "xxh3_128",
                 "entries": [{"name": "<uuid>.ovf", "size": 1234, "digest": "<32 hex>"}, ...]}

oVirt's reader ignores keys it does not know and ``info.json`` itself
(§1.8), so the manifest costs nothing in compatibility.

Parsing is strict: a manifest we do not fully understand is refused (422),
never half-applied, because a half-checked store is later trusted as whole.
Unknown keys *outside* the manifest are kept, as oVirt may add some.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from typing import Any, NamedTuple, NoReturn

from . import strictjson
from .errors import WireError

INFO_NAME = "info.json"
METADATA_NAME = "metadata.json"
ALGORITHM = "xxh3_128"

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_OVF_NAME = re.compile(_UUID + r"\.ovf")
_UUID_RE = re.compile(_UUID)
_HEX128 = re.compile(r"[0-9a-f]{32}")
#: Many names or digests checked at once in C (stores list 10,000): the
#: bytes with every lower-case hex digit made an "x" must be the shape.  A
#: literal "x" becomes a NUL, so that it never passes for a digit.
_HEX_DIGITS = b"0123456789abcdef"
_TO_SHAPE = bytes.maketrans(_HEX_DIGITS + b"x", b"x" * len(_HEX_DIGITS) + b"\0")
_UUID_SHAPE = b"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
#: The "f" of ".ovf" is a hex digit: any digit there passes the shape, so
#: the suffix is checked on its own too.
_OVF_SHAPE = _UUID_SHAPE + b".ovx"
_ENTRY_KEYS = {"name", "size", "digest"}
_MANIFEST_KEYS = {"algorithm", "entries"}

# Java's Date.toString() uses English names whatever the locale.
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class BadManifest(WireError):
    """``info.json`` or ``metadata.json`` is malformed, or its manifest is."""

    http_status = 422
    code = "invalid-ovf-manifest"


def is_ovf_name(name: str) -> bool:
    """True for ``<uuid>.ovf`` with a canonical lower-case UUID, as the engine writes."""
    return _OVF_NAME.fullmatch(name) is not None


def _is_int(value: object) -> bool:
    # bool is an int subclass; JSON true is not a size.
    return isinstance(value, int) and not isinstance(value, bool)


class _Entry(NamedTuple):
    name: str
    size: int
    digest: str


class ManifestEntry(_Entry):
    """One entry after ``info.json``: its name, byte size and xxh3-128 hex digest.

    Validated on construction (parsed or built): a name the tar may hold
    after ``info.json``, a positive size (empty OVFs are refused by the
    reader) and 32 lower-case hex digits.  A tuple, because a store lists
    10,000 of them and the daemon parses them on its event loop.
    """

    __slots__ = ()

    def __new__(cls, name: str, size: int, digest: str) -> ManifestEntry:
        if not _valid_entry(name, size, digest):
            _refuse_entry(name, size, digest)
        return tuple.__new__(cls, (name, size, digest))


def _valid_entry(name: object, size: object, digest: object) -> bool:
    # type() is: bool is an int subclass, and JSON true is not a size.
    return (type(name) is str and (_OVF_NAME.fullmatch(name) is not None
                                   or name == METADATA_NAME)
            and type(size) is int and size > 0
            and type(digest) is str and _HEX128.fullmatch(digest) is not None)


def _refuse_entry(name: object, size: object, digest: object) -> NoReturn:
    if not isinstance(name, str) or not (is_ovf_name(name) or name == METADATA_NAME):
        raise BadManifest(f"manifest entry name {name!r} is not <uuid>.ovf or "
                          f"{METADATA_NAME}")
    if not _is_int(size) or size <= 0:  # type: ignore[operator]
        raise BadManifest(f"manifest entry {name!r}: size {size!r} is not a "
                          "positive integer")
    raise BadManifest(f"manifest entry {name!r}: digest {digest!r} is not "
                      "32 lower-case hex digits")


@dataclass(frozen=True)
class Manifest:
    """Every entry that follows ``info.json``, in tar order (order is not checked)."""

    entries: tuple[ManifestEntry, ...]
    algorithm: str = ALGORITHM

    def __post_init__(self) -> None:
        if self.algorithm != ALGORITHM:
            raise BadManifest(f"manifest algorithm {self.algorithm!r} is not supported "
                              f"(only {ALGORITHM!r})")
        names = [e.name for e in self.entries]
        if len(set(names)) != len(names):
            seen: set[str] = set()
            twice = next(n for n in names if n in seen or seen.add(n))  # type: ignore[func-returns-value]
            raise BadManifest(f"manifest lists {twice!r} twice")

    def by_name(self) -> dict[str, ManifestEntry]:
        return {e.name: e for e in self.entries}

    def to_json(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "entries": [{"name": e.name, "size": e.size, "digest": e.digest}
                        for e in self.entries],
        }

    @classmethod
    def from_json(cls, raw: object) -> Manifest:
        """Parse the value of ``"Manifest"``; unknown or missing keys are refused."""
        obj = _exact_keys(raw, _MANIFEST_KEYS, "Manifest")
        entries = obj["entries"]
        if not isinstance(entries, list):
            raise BadManifest("Manifest.entries is not a list")
        parsed = _valid_entries(entries)
        if parsed is None:  # one is wrong: find it, and say what is wrong with it
            parsed = []
            for i, item in enumerate(entries):
                e = _exact_keys(item, _ENTRY_KEYS, f"Manifest.entries[{i}]")
                parsed.append(ManifestEntry(e["name"], e["size"], e["digest"]))
        return cls(tuple(parsed), obj["algorithm"])


def _valid_entries(entries: list[Any]) -> list[ManifestEntry] | None:
    """Every entry checked as :class:`ManifestEntry` does, column by column
    in C (a store lists 10,000 and the daemon parses them on its event
    loop); None if any is not valid."""
    if not entries:
        return []
    if set(map(type, entries)) != {dict} or set(map(len, entries)) != {3}:
        return None
    try:  # three keys each, these three: exactly the keys
        names = list(map(itemgetter("name"), entries))
        sizes = list(map(itemgetter("size"), entries))
        digests = list(map(itemgetter("digest"), entries))
    except KeyError:
        return None
    if set(map(type, names)) != {str} or set(map(type, sizes)) != {int} \
            or set(map(type, digests)) != {str} or min(sizes) <= 0 \
            or set(map(len, digests)) != {32} \
            or not _all_shaped(digests, b"x" * 32, ""):
        return None
    ovfs = names
    if METADATA_NAME in names:  # listed once, or Manifest refuses it
        ovfs = list(names)
        ovfs.remove(METADATA_NAME)
    if not _all_shaped(ovfs, _OVF_SHAPE) or not all(map(str.endswith, ovfs, repeat(".ovf"))):
        return None
    # tuple.__new__ straight from map: no Python frame per entry.
    return list(map(tuple.__new__, repeat(ManifestEntry),
                    zip(names, sizes, digests, strict=True)))


def _all_shaped(texts: Sequence[str], shape: bytes, sep: str = "\n") -> bool:
    """Whether every one of ``texts`` is ``shape`` with each "x" a lower-case
    hex digit; in C, whatever their number."""
    joined = sep.join(texts)
    return joined.isascii() and joined.encode("ascii").translate(_TO_SHAPE) \
        == sep.encode("ascii").join(repeat(shape, len(texts)))


def _exact_keys(raw: object, keys: set[str], what: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BadManifest(f"{what} is not a JSON object")
    if raw.keys() != keys:
        raise BadManifest(f"{what} must have exactly the keys {sorted(keys)}, "
                          f"not {sorted(raw)}")
    return raw


def _load_object(data: bytes | bytearray | memoryview, what: str) -> dict[str, Any]:
    """Strict JSON (see ``strictjson``) holding an object."""
    try:
        obj = strictjson.loads(data)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
        raise BadManifest(f"{what} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise BadManifest(f"{what} is not a JSON object")
    return obj


def build_info(last_updated: str, sd_uuids: Sequence[str], manifest: Manifest | None) -> bytes:
    """``info.json``: ``last_updated`` as from :func:`java_date`, the domain UUIDs,
    and the manifest of every following entry (omitted when None, as oVirt does)."""
    if manifest is None:
        return strictjson.dumps({"Last Updated": last_updated,
                       "Storage Domains": [{"uuid": sd} for sd in sd_uuids]})
    return build_store_info(last_updated, sd_uuids,
                            ((e.name, e.size, e.digest) for e in manifest.entries))


_SLOT = "@entries@"


def build_store_info(last_updated: str, sd_uuids: Sequence[str],
                     entries: Iterable[tuple[str, int, str]]) -> bytes:
    """``build_info`` with a manifest of ``(name, size, digest)`` entries, each
    checked as a :class:`ManifestEntry` and dropped: a store of 10,000 OVFs
    builds no list of entry objects and no JSON tree.  Same bytes as
    ``json.dumps(indent=2)`` of the whole object."""
    lines = []
    seen: set[str] = set()
    for name, size, digest in entries:
        ManifestEntry(name, size, digest)  # raises BadManifest
        if name in seen:
            raise BadManifest(f"manifest lists {name!r} twice")
        seen.add(name)
        # Validated: a name and a digest that JSON needs no escape for.
        lines.append(f'{{\n        "name": "{name}",\n        "size": {size},\n'
                     f'        "digest": "{digest}"\n      }}')
    del seen
    head = strictjson.dumps({
        "Last Updated": last_updated,
        "Storage Domains": [{"uuid": sd} for sd in sd_uuids],
        "Manifest": {"algorithm": ALGORITHM, "entries": [_SLOT] if lines else []},
    })
    if not lines:
        return head
    # The manifest is the last key: its slot is the last such string.
    before, _, after = head.rpartition(f'"{_SLOT}"'.encode("ascii"))
    return b"".join((before, ",\n      ".join(lines).encode("ascii"), after))


def parse_info(data: bytes | bytearray | memoryview) -> tuple[dict[str, Any], Manifest | None]:
    """Parse ``info.json`` into (the whole object, its manifest or None).

    oVirt's two keys must be there with their types (§1.5: the engine
    always writes them); other keys are kept as they are.
    """
    obj = _load_object(data, INFO_NAME)
    if not isinstance(obj.get("Last Updated"), str):
        raise BadManifest(f'{INFO_NAME}: "Last Updated" is missing or not a string')
    domains = obj.get("Storage Domains")
    if not isinstance(domains, list) or not all(
        isinstance(d, dict) and isinstance(d.get("uuid"), str) for d in domains
    ):
        raise BadManifest(f'{INFO_NAME}: "Storage Domains" is not a list of {{"uuid": ...}}')
    if "Manifest" not in obj:
        return obj, None
    return obj, Manifest.from_json(obj["Manifest"])


def build_metadata(vm_status: Mapping[str, int]) -> bytes:
    """``metadata.json``: ``{"VM Status": {vm_uuid: VMStatus int}}``.

    Checked as :func:`parse_metadata` checks it (``BadManifest``): a store
    the reader would refuse is never planned."""
    _check_vm_status(vm_status)
    return strictjson.dumps({"VM Status": dict(vm_status)})


def parse_metadata(data: bytes | bytearray | memoryview) -> dict[str, int]:
    """The ``"VM Status"`` map of ``metadata.json``: canonical UUIDs to ints."""
    obj = _load_object(data, METADATA_NAME)
    status = obj.get("VM Status")
    if not isinstance(status, dict):
        raise BadManifest(f'{METADATA_NAME}: "VM Status" is missing or not an object')
    _check_vm_status(status)
    return status


def _check_vm_status(status: Mapping[Any, Any]) -> None:
    # All at once in C first (a store of 10,000 VMs lists most of them);
    # one by one only to find the wrong one.
    if set(map(type, status)) <= {str} and set(map(type, status.values())) <= {int} \
            and _all_shaped(list(status), _UUID_SHAPE):
        return
    for vm, value in status.items():
        if not isinstance(vm, str) or not _UUID_RE.fullmatch(vm) or not _is_int(value):
            raise BadManifest(f'{METADATA_NAME}: "VM Status" entry {vm!r}: {value!r} is not '
                              "a canonical UUID mapped to an integer")


def java_date(ts: float) -> str:
    """``ts`` (seconds since the epoch) as Java ``Date.toString()`` in UTC.

    ``"Wed Jul 01 11:43:07 UTC 2020"``: the engine parses it back with
    ``"EEE MMM d HH:mm:ss zzz yyyy"`` (§1.4) to pick the latest store.
    """
    t = time.gmtime(ts)
    return (f"{_DAYS[t.tm_wday]} {_MONTHS[t.tm_mon - 1]} {t.tm_mday:02d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} UTC {t.tm_year}")
