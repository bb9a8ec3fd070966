from __future__ import annotations

import json

import pytest

from stream.wire import strictjson


@pytest.mark.parametrize("text", [
    pytest.param(b'{"a": 1, "a": 2}', id="duplicate-key"),
    pytest.param(b'[{"b": {"c": 1, "c": 1}}]', id="nested-duplicate"),
    pytest.param(b'{"a": NaN}', id="nan"),
    pytest.param(b'{"a": -Infinity}', id="infinity"),
    pytest.param(b'{"a": 1e999}', id="overflows-a-float"),
    pytest.param('{"a": "é"}'.encode("latin-1"), id="not-utf8"),
    pytest.param(b'{"a": 1', id="truncated"),
])
def test_refused(text: bytes) -> None:
    with pytest.raises(ValueError):
        strictjson.loads(text)


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises((ValueError, RecursionError)):
        strictjson.loads(b"[" * 100_000 + b"]" * 100_000)


def test_accepted_values_are_plain_json() -> None:
    text = b'{"a": [1, 2.5, "x", null, true], "b": {"c": -1e300}}'
    assert strictjson.loads(memoryview(text)) == json.loads(text)


def test_dumps_is_pretty_ascii_and_round_trips() -> None:
    obj = {"name": "vm\u00e9", "n": [1, 2]}
    out = strictjson.dumps(obj)
    assert out.isascii() and b'\n  "n": [\n' in out
    assert strictjson.loads(out) == obj
