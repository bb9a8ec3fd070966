"""JSON as the OVF store's entries use it: strict in, pretty out (sans-IO).

A store is trusted later as a whole, so what it says must mean one thing:
UTF-8 only, no key given twice (parsers disagree on which one wins), no
``NaN`` or ``Infinity``, no number too large for a float (``1e999``
would be written back as ``Infinity``).
"""

from __future__ import annotations

import json
import math
from typing import Any


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def value_bound(data: bytes) -> int:
    """At least the number of values ``data`` holds, counted in C without
    parsing (parsing costs a Python object per value): each value but the
    first of an array or object follows a comma, and the first its bracket
    or brace (those in strings count too, which only makes it larger)."""
    return 1 + data.count(b",") + data.count(b"[") + data.count(b"{")


def loads(data: bytes | bytearray | memoryview) -> Any:
    """The value ``data`` holds; ValueError (or RecursionError, for deep
    nesting) when it is not strict JSON."""
    return json.loads(bytes(data).decode("utf-8"), object_pairs_hook=_no_duplicates,
                      parse_constant=_no_constant, parse_float=_finite)


def dumps(obj: object) -> bytes:
    """Pretty, like the engine's Jackson output; ASCII, so the size is the length."""
    return json.dumps(obj, indent=2).encode("ascii")
