"""Checks of client input: UUIDs, sizes, choices and domain locations.

Each refuses bad input with :class:`~volume.errors.InvalidRequest` and a
sentence that names what was wrong, before anything touches storage.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import TypeVar

from .errors import InvalidRequest

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def check_uuid(value: object, what: str = "UUID") -> str:
    """Return ``value`` in canonical lower-case form, or refuse it.

    Only the 36-character hyphenated form is accepted: braces, ``urn:``
    prefixes and bare hex name the same UUID in different ways, and a UUID
    becomes a file name here, so there must be exactly one spelling.
    """
    if not isinstance(value, str) or not _UUID.fullmatch(value.lower()):
        raise InvalidRequest(f"malformed UUID: {what} {value!r}")
    return value.lower()


E = TypeVar("E", bound=StrEnum)


def parse_enum(cls: type[E], value: object, what: str) -> E:
    for member in cls:
        if member.value == value:
            return member
    choices = ", ".join(m.value for m in cls)
    raise InvalidRequest(f"{what} must be one of {choices}, not {value!r}")


#: The largest volume: an off_t, what a file or a device offset can be.
MAX_SIZE = 2**63 - 1


def check_size(size: object) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_SIZE:
        raise InvalidRequest(f"volume size must be a positive integer up to {MAX_SIZE}, "
                             f"not {size!r}")
    return size


def _check_location(path: str, what: str, is_kind: Callable[[int], bool],
                    kind: str) -> os.stat_result:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InvalidRequest(f"storage domain {what} {path} does not exist") from None
    except OSError as e:
        raise InvalidRequest(f"storage domain {what} {path} cannot be checked: "
                             f"{e.strerror}") from None
    if not is_kind(st.st_mode):
        raise InvalidRequest(f"storage domain {what} {path} is not a {kind}")
    return st


def check_directory(path: str) -> str:
    """A file domain's location: an existing directory.  Returns its real path."""
    _check_location(path, "location", stat.S_ISDIR, "directory")
    return os.path.realpath(path)


def check_block_device(path: str) -> os.stat_result:
    """A block domain's device: an existing block device."""
    return _check_location(path, "device", stat.S_ISBLK, "block device")


def check_block_devices(devices: Sequence[str]) -> tuple[str, ...]:
    """A block domain's devices: a list of one or more, each an existing
    block device, none given twice (under any name)."""
    if isinstance(devices, str) or not devices:
        raise InvalidRequest("a block storage domain needs a list of one or more devices")
    seen = set()
    for dev in devices:
        st = check_block_device(dev)
        if st.st_rdev in seen:
            raise InvalidRequest(f"device {dev} is given twice")
        seen.add(st.st_rdev)
    return tuple(devices)
