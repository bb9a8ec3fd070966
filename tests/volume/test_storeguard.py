from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from volume.errors import Forbidden
from volume.sd import Content, VolumeInfo, new_volume
from volume.storeguard import check_deletable, check_resizable, check_write_target

GUARDS: list[tuple[Callable[[VolumeInfo], None], str]] = [
    (check_write_target, ": only an OVF store update (PUT /domains/{sd}/ovf-store) writes it"),
    (check_resizable, ", whose size is fixed: its commit record is at its end"),
    (check_deletable, ": the daemon manages the domain's OVF_STORE volumes, and deleting "
                      "one loses a copy of the domain's OVFs"),
]


def _volume(content: str) -> VolumeInfo:
    return new_volume(str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4()), 1 << 20,
                      content=content)


@pytest.mark.parametrize("guard,why", GUARDS, ids=[g.__name__ for g, _ in GUARDS])
def test_a_store_is_refused_and_a_data_volume_passes(
    guard: Callable[[VolumeInfo], None], why: str
) -> None:
    store = _volume(Content.OVF_STORE)
    with pytest.raises(Forbidden) as e:
        guard(store)
    assert e.value.http_status == 403
    assert str(e.value.detail) == (f"Volume {store.img_uuid}/{store.vol_uuid} of storage "
                                   f"domain {store.sd_uuid} is an OVF store"
                                   + why.format(sd=store.sd_uuid))
    guard(_volume(Content.DATA))  # no error
