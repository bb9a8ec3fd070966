from __future__ import annotations

import datetime
import json
import uuid
from typing import Any
from unittest import mock

import pytest

from stream.wire.manifest import (
    METADATA_NAME,
    BadManifest,
    Manifest,
    ManifestEntry,
    _exact_keys,
    build_info,
    build_metadata,
    is_ovf_name,
    java_date,
    parse_info,
    parse_metadata,
)

SD = "b7c6b6a5-1c1c-4a43-9b3e-0123456789ab"
VM = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
DIGEST = "0123456789abcdef0123456789abcdef"
MANIFEST = Manifest((
    ManifestEntry(f"{VM}.ovf", 1234, DIGEST),
    ManifestEntry(METADATA_NAME, 42, "f" * 32),
))


def info_with(manifest: Any) -> bytes:
    return json.dumps({"Last Updated": "x", "Storage Domains": [{"uuid": SD}],
                       "Manifest": manifest}).encode()


def test_info_round_trip() -> None:
    data = build_info("Wed Jul 01 11:43:07 UTC 2020", [SD], MANIFEST)
    info, manifest = parse_info(data)
    assert manifest == MANIFEST
    assert info["Last Updated"] == "Wed Jul 01 11:43:07 UTC 2020"
    assert info["Storage Domains"] == [{"uuid": SD}]
    assert info["Manifest"]["algorithm"] == "xxh3_128"
    assert data.startswith(b'{\n  "Last Updated"')  # pretty, in oVirt's key order


def test_info_without_manifest() -> None:
    info, manifest = parse_info(build_info("x", [SD], None))
    assert manifest is None and "Manifest" not in info


def test_info_as_ovirt_writes_it() -> None:
    # Jackson's pretty printer, as in the engine's info.json (§1.5); extra keys kept.
    data = (b'{\n  "Last Updated" : "Wed Jul 01 11:43:07 IDT 2020",\n'
            b'  "Storage Domains" : [ {\n    "uuid" : "' + SD.encode() + b'"\n  } ],\n'
            b'  "Future Key" : 1\n}')
    info, manifest = parse_info(data)
    assert manifest is None and info["Future Key"] == 1


@pytest.mark.parametrize("data", [
    pytest.param(b"{", id="truncated-json"),
    pytest.param(b"[]", id="not-an-object"),
    pytest.param(b'{"a": 1, "a": 2}', id="duplicate-key"),
    pytest.param(b'{"a": NaN}', id="nan"),
    pytest.param('{"a": "é"}'.encode("utf-16"), id="not-utf8"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deeply-nested"),
    pytest.param(b'{"Storage Domains": []}', id="no-last-updated"),
    pytest.param(b'{"Last Updated": "x"}', id="no-storage-domains"),
    pytest.param(b'{"Last Updated": "x", "Storage Domains": ["sd"]}', id="domains-not-uuids"),
    pytest.param(b'{"Last Updated": 1, "Storage Domains": []}', id="date-not-string"),
])
def test_info_malformed(data: bytes) -> None:
    with pytest.raises(BadManifest) as e:
        parse_info(data)
    assert e.value.http_status == 422


GOOD_ENTRY = {"name": f"{VM}.ovf", "size": 1, "digest": DIGEST}


@pytest.mark.parametrize("manifest", [
    pytest.param(None, id="null"),
    pytest.param([], id="list"),
    pytest.param({"entries": []}, id="no-algorithm"),
    pytest.param({"algorithm": "md5", "entries": []}, id="other-algorithm"),
    pytest.param({"algorithm": "xxh3_128", "entries": {}}, id="entries-not-list"),
    pytest.param({"algorithm": "xxh3_128", "entries": [], "x": 1}, id="unknown-key"),
    pytest.param({"algorithm": "xxh3_128", "entries": [[]]}, id="entry-not-object"),
    pytest.param({"algorithm": "xxh3_128", "entries": [{**GOOD_ENTRY, "mode": 1}]},
                 id="entry-unknown-key"),
    pytest.param({"algorithm": "xxh3_128", "entries": [{**GOOD_ENTRY, "size": True}]},
                 id="size-bool"),
    pytest.param({"algorithm": "xxh3_128", "entries": [{**GOOD_ENTRY, "size": "1"}]},
                 id="size-string"),
    pytest.param({"algorithm": "xxh3_128", "entries": [{**GOOD_ENTRY, "size": 0}]},
                 id="size-zero"),
    pytest.param({"algorithm": "xxh3_128", "entries": [{**GOOD_ENTRY, "size": 1.5}]},
                 id="size-float"),
    pytest.param({"algorithm": "xxh3_128", "entries": [{**GOOD_ENTRY, "digest": DIGEST[:-1]}]},
                 id="digest-short"),
    pytest.param({"algorithm": "xxh3_128",
                  "entries": [{**GOOD_ENTRY, "digest": DIGEST.upper()}]},
                 id="digest-upper-case"),
    pytest.param({"algorithm": "xxh3_128", "entries": [{**GOOD_ENTRY, "name": "info.json"}]},
                 id="lists-info-json"),
    pytest.param({"algorithm": "xxh3_128", "entries": [{**GOOD_ENTRY, "name": "../x.ovf"}]},
                 id="name-path"),
    pytest.param({"algorithm": "xxh3_128", "entries": [GOOD_ENTRY, GOOD_ENTRY]},
                 id="name-twice"),
    pytest.param({"algorithm": "xxh3_128", "entries": [{**GOOD_ENTRY, "name": ""}]},
                 id="name-empty"),
    pytest.param({"algorithm": "xxh3_128", "entries": [GOOD_ENTRY, {**GOOD_ENTRY, "name": ""}]},
                 id="name-empty-last"),
    pytest.param({"algorithm": "xxh3_128",
                  "entries": [{**GOOD_ENTRY, "name": f"{VM}.ovf\n{VM}.ovf"}]},
                 id="name-two-lines"),
    pytest.param({"algorithm": "xxh3_128",
                  "entries": [GOOD_ENTRY, {**GOOD_ENTRY, "name": f"{VM.upper()}.ovf"}]},
                 id="name-upper-case"),
    pytest.param({"algorithm": "xxh3_128",
                  "entries": [GOOD_ENTRY, {**GOOD_ENTRY, "name": f"{VM[:-1]}\u0661.ovf"}]},
                 id="name-arabic-digit"),
    pytest.param({"algorithm": "xxh3_128",
                  "entries": [GOOD_ENTRY, {**GOOD_ENTRY, "name": f"{VM}.OVF"}]},
                 id="name-upper-suffix"),
    pytest.param({"algorithm": "xxh3_128",
                  "entries": [GOOD_ENTRY, {**GOOD_ENTRY, "name": "metadata.json"},
                              {**GOOD_ENTRY, "name": "metadata.json"}]},
                 id="metadata-twice"),
    pytest.param({"algorithm": "xxh3_128",
                  "entries": [GOOD_ENTRY, {**GOOD_ENTRY, "digest": DIGEST[:-1] + "\u0661"}]},
                 id="digest-arabic-digit"),
    # A literal "x" is what the bulk check turns each hex digit into, and
    # the "f" of ".ovf" is a hex digit itself (found by a fuzzing review).
    *(pytest.param({"algorithm": "xxh3_128", "entries": [
        GOOD_ENTRY, {**GOOD_ENTRY, "name": f"{uuid.UUID(int=7)}.ovf", **bad}]},
                   id=f"x-{i}") for i, bad in enumerate([
                       {"name": f"{VM}.ova"}, {"name": f"{VM}.ov0"}, {"name": f"{VM}.ovx"},
                       {"name": "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx.ovf"},
                       {"name": f"{VM[:-1]}x.ovf"}, {"digest": "x" * 32},
                       {"digest": DIGEST[:-1] + "x"}])),
])
def test_manifest_malformed(manifest: Any) -> None:
    """The same refusals whether the entries are checked in bulk or one by one."""
    with pytest.raises(BadManifest):
        parse_info(info_with(manifest))


def test_manifest_checked_in_bulk_as_one_by_one() -> None:
    """10,000 entries (the bulk check, in C) give what ManifestEntry gives
    each, metadata.json listed among them."""
    entries: list[dict[str, Any]] = [
        {"name": f"{uuid.UUID(int=i + 1)}.ovf", "size": i + 1,
         "digest": f"{i:032x}"} for i in range(10_000)]
    entries.insert(5_000, {"name": "metadata.json", "size": 7, "digest": DIGEST})
    with mock.patch("stream.wire.manifest._exact_keys", wraps=_exact_keys) as one_by_one:
        _, manifest = parse_info(info_with({"algorithm": "xxh3_128", "entries": entries}))
    assert one_by_one.call_count == 1  # the Manifest object's keys, no entry's
    assert manifest is not None
    assert manifest.entries == tuple(ManifestEntry(e["name"], e["size"], e["digest"])
                                     for e in entries)


def test_manifest_built_invalid() -> None:
    with pytest.raises(BadManifest):
        ManifestEntry(f"{VM.upper()}.ovf", 1, DIGEST)
    with pytest.raises(BadManifest):
        Manifest((), algorithm="sha256")


def test_metadata_round_trip() -> None:
    data = build_metadata({VM: 1})
    assert json.loads(data) == {"VM Status": {VM: 1}}
    assert parse_metadata(data) == {VM: 1}
    assert parse_metadata(build_metadata({})) == {}


def test_metadata_checked_in_bulk() -> None:
    status = {str(uuid.UUID(int=i + 1)): i % 7 for i in range(10_000)}
    with mock.patch("stream.wire.manifest._UUID_RE") as one_by_one:
        assert parse_metadata(build_metadata(status)) == status
    one_by_one.fullmatch.assert_not_called()


@pytest.mark.parametrize("data", [
    pytest.param(b"{}", id="no-vm-status"),
    pytest.param(b'{"VM Status": []}', id="not-an-object"),
    pytest.param(b'{"VM Status": {"vm": 1}}', id="key-not-uuid"),
    pytest.param(json.dumps({"VM Status": {VM: "Up"}}).encode(), id="value-not-int"),
    pytest.param(json.dumps({"VM Status": {VM: True}}).encode(), id="value-bool"),
    pytest.param(json.dumps({"VM Status": {VM: 1, VM.upper(): 1}}).encode(),
                 id="key-upper-case"),
    pytest.param(json.dumps({"VM Status": {VM: 1, VM[:-1] + "\u0661": 1}}).encode(),
                 id="key-arabic-digit"),
    pytest.param(json.dumps({"VM Status": {VM: 1, f"{VM}\n{VM}": 1}}).encode(),
                 id="key-two-lines"),
    pytest.param(json.dumps({"VM Status": {VM: 1, VM[:-1] + "x": 1}}).encode(),
                 id="key-with-an-x"),
])
def test_metadata_malformed(data: bytes) -> None:
    with pytest.raises(BadManifest):
        parse_metadata(data)


def test_java_date() -> None:
    ts = datetime.datetime(2020, 7, 1, 11, 43, 7, tzinfo=datetime.UTC).timestamp()
    assert java_date(ts) == "Wed Jul 01 11:43:07 UTC 2020"
    assert java_date(0) == "Thu Jan 01 00:00:00 UTC 1970"


def test_java_date_parses_back() -> None:
    # The engine's "EEE MMM d HH:mm:ss zzz yyyy", in strptime's words.
    ts = 1_700_000_000.75
    text = java_date(ts)
    parsed = datetime.datetime.strptime(text, "%a %b %d %H:%M:%S %Z %Y")
    assert parsed.replace(tzinfo=datetime.UTC).timestamp() == int(ts)


@pytest.mark.parametrize(("name", "ok"), [
    (f"{VM}.ovf", True),
    (f"{VM.upper()}.ovf", False),
    (f"{VM}.OVF", False),
    (f"{VM}", False),
    (f"{VM.replace('-', '')}.ovf", False),
    (f"{{{VM}}}.ovf", False),
    (f"../{VM}.ovf", False),
    (f"{VM}.ovf\n", False),
    ("info.json", False),
])
def test_is_ovf_name(name: str, ok: bool) -> None:
    assert is_ovf_name(name) is ok
