"""A held OVF whose entity came into the cache by another path than a
domain import (importer.py, 'vm create') outlives the entity's deletion:
the deleted VM is written back into the domain's store."""

from __future__ import annotations

import uuid
from pathlib import Path

from engine_client.cache import Cache
from engine_client.entities import ImportItem
from engine_client.ovf import parse

from .ovfs import DiskSpec, vm_ovf


def test_a_deleted_entity_is_not_held_back(tmp_path: Path) -> None:
    with Cache.open(str(tmp_path)) as c:
        sd = str(uuid.uuid4())
        c.add_domain(sd, "file", [str(tmp_path / "sd")])
        vm = str(uuid.uuid4())
        data = vm_ovf(vm, "v", [DiskSpec(sd)])
        c.hold_ovfs(sd, [(vm, data, "a disk on a domain this engine does not know")])
        c.import_entities([ImportItem("file", parse(data), data)])
        c.delete_entity(vm)
        assert vm not in {m.uuid for m in c.store_content(sd).members}
