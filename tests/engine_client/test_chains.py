"""The order of a disk's volumes: one chain, base first, or a clear refusal."""

from __future__ import annotations

from typing import Any

import pytest

from engine_client.chains import order
from engine_client.disks import DiskError

SD, IMG = "sd-1", "img-1"


def vol(name: str, parent: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"vol_uuid": name, "parent": parent, "format": "qcow2" if parent else "raw",
            "content": "DATA", **extra}


def test_a_chain_comes_base_first_whatever_the_listing_order() -> None:
    listed = [vol("c", "b"), vol("a"), vol("b", "a"), vol("x", content="OVF_STORE")]
    assert [v["vol_uuid"] for v in order(listed, SD, IMG)] == ["a", "b", "c"]
    assert [v["vol_uuid"] for v in order([vol("a")], SD, IMG)] == ["a"]


@pytest.mark.parametrize(("listed", "message"), [
    ([], f"storage domain {SD} holds no volume of disk {IMG}"),
    ([vol("a"), vol("b", "a"), vol("c", "a")],
     f"disk {IMG} on {SD} is not one chain: volumes b, c share the parent a"),
    ([vol("a"), vol("b")], f"disk {IMG} on {SD} is not one chain: volumes a, b share the "
                           "parent (none)"),
    ([vol("a"), vol("b", "a"), vol("d", "z")],
     f"disk {IMG} on {SD} has volumes outside its chain: d"),
    ([vol("a"), vol("b", "a", legal=False)],
     f"volume b of disk {IMG} on {SD} is marked incomplete"),
])
def test_what_is_not_one_usable_chain_is_refused(listed: list[dict[str, Any]],
                                                 message: str) -> None:
    with pytest.raises(DiskError) as e:
        order(listed, SD, IMG)
    assert str(e.value).startswith(message)
