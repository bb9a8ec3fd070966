from __future__ import annotations

import pytest

from engine_client import decide
from engine_client.model import (
    Disk,
    Domain,
    DomainStatus,
    Entity,
    Host,
    Snapshot,
    Store,
    VmStatus,
)

SD1, SD2, SD3 = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222", \
    "33333333-3333-3333-3333-333333333333"


def entity(uuid: str, status: int = 0, kind: str = "vm", origin: int | None = 0,
           gens: tuple[int, int] = (2, 1), cached: bool = True) -> Entity:
    return Entity(uuid, f"n-{uuid[:2]}", kind, status, origin, gens[0], gens[1], "d" * 32,
                  "c" * 32 if cached else None, 100 if cached else None)


def disk(sd: str, shareable: bool = False, active: bool = True, locked: bool = False,
         owner: str = "e1") -> Disk:
    return Disk(owner, f"disk-{sd[:2]}", sd, shareable, active, locked)


def store(next_attempt: float = 0.0, failures: int = 0) -> Store:
    return Store(SD1, True, 1, None, None, frozenset(), None, None, None, failures,
                 next_attempt, None)


def test_needs_processing() -> None:
    assert decide.needs_processing(entity("a"))
    assert not decide.needs_processing(entity("a", gens=(3, 3)))
    assert not decide.needs_processing(entity("a", origin=4)), "external VMs are left out"


@pytest.mark.parametrize("e, disks, snaps, reason", [
    pytest.param(entity("a"), [disk(SD1)], [], None, id="free"),
    pytest.param(entity("a", status=VmStatus.IMAGE_LOCKED), [], [], "vm is ImageLocked",
                 id="image-locked"),
    pytest.param(entity("a"), [disk(SD1), disk(SD2, locked=True)], [],
                 "disk disk-22 is locked", id="locked-disk"),
    pytest.param(entity("a"), [], [Snapshot("a", "s1", "REGULAR", "IN_PREVIEW")],
                 "snapshot s1 is IN_PREVIEW", id="snapshot-not-ok"),
    pytest.param(entity("a", status=VmStatus.UP), [], [Snapshot("a", "s1", "ACTIVE", "OK")],
                 None, id="running-is-fine"),
])
def test_lock_reason(e: Entity, disks: list[Disk], snaps: list[Snapshot],
                     reason: str | None) -> None:
    assert decide.lock_reason(e, disks, snaps) == reason


def test_domains_to_mark() -> None:
    disks = [disk(SD1), disk(SD2, shareable=True), disk(SD3, active=False)]
    assert decide.domains_to_mark(disks, [SD3], [SD1, SD2]) == {SD1, SD3}, \
        "active non-shareable disks, plus the stores that list it"
    assert decide.domains_to_mark([], [], [SD1, SD2]) == {SD1, SD2}, \
        "a VM without disks goes to every Active domain"
    # oVirt's GetVmsAndTemplatesIdsWithoutAttachedImageDisks(pool, shareable=false):
    # no non-shareable disk is as no disk at all.
    assert decide.domains_to_mark([disk(SD2, shareable=True)], [], [SD1, SD3]) == {SD1, SD3}
    assert decide.domains_to_mark([disk(SD3, active=False)], [SD3], [SD1, SD2]) == {
        SD1, SD2, SD3}, "an inactive disk counts as none (see decide.holds)"


def test_active_domains() -> None:
    found = [Domain(SD1, "file", ("/a",), DomainStatus.ACTIVE),
             Domain(SD2, "file", ("/b",), DomainStatus.MAINTENANCE)]
    assert decide.active_domains(found) == [SD1]


def test_store_members_and_statuses() -> None:
    ents = [
        entity("b1", status=VmStatus.UP),          # disk on SD1
        entity("a1"),                              # no disks: everywhere
        entity("c1", kind="template"),             # disk on SD1
        entity("d1", origin=4),                    # external: never
        entity("e1", cached=False),                # never processed: no cached OVF
        entity("f1", status=VmStatus.PAUSED),      # only a shareable disk: everywhere
        entity("g1"),                              # only an inactive disk: everywhere
        entity("h1"),                              # shareable on SD1, own disk on SD2
    ]
    disks = {"b1": [disk(SD1, owner="b1")], "c1": [disk(SD1, owner="c1")],
             "d1": [disk(SD1, owner="d1")], "e1": [disk(SD1, owner="e1")],
             "f1": [disk(SD1, shareable=True, owner="f1")],
             "g1": [disk(SD1, active=False, owner="g1")],
             "h1": [disk(SD1, shareable=True, owner="h1"), disk(SD2, owner="h1")]}
    members = decide.store_members(SD1, ents, disks)
    assert [m.uuid for m in members] == ["a1", "b1", "c1", "f1", "g1"]
    assert [m.uuid for m in decide.store_members(SD2, ents, disks)] == ["a1", "f1", "g1",
                                                                        "h1"]
    assert decide.vm_statuses(ents, members) == {"b1": 1, "f1": VmStatus.PAUSED}, \
        "only VMs that are not Down"


def test_backoff_grows_is_capped_and_jittered() -> None:
    delays = [decide.backoff_delay(n, 30, 1800, 0.5, 0.0) for n in range(1, 10)]
    assert delays[:4] == [30, 60, 120, 240]
    assert delays[-1] == 1800
    assert decide.backoff_delay(1, 30, 1800, 0.5, 0.999) == pytest.approx(15, abs=0.1)
    assert decide.backoff_delay(500, 30, 1800, 0.0, 0.5) == 1800


def test_pushable() -> None:
    active = Domain(SD1, "file", ("/a",), DomainStatus.ACTIVE)
    leaving = Domain(SD1, "file", ("/a",), DomainStatus.PREPARING_FOR_MAINTENANCE)
    down = Domain(SD1, "file", ("/a",), DomainStatus.MAINTENANCE)
    assert decide.pushable(active, store(), 100, False) is None
    assert decide.pushable(leaving, store(), 100, False) is None
    assert decide.pushable(down, store(), 100, False) == "the domain is Maintenance"
    assert decide.pushable(None, store(), 100, False) == "the domain is not known"
    assert decide.pushable(active, store(next_attempt=160), 100, False) == "retrying in 60 s"
    assert decide.pushable(active, store(next_attempt=160), 100, True) is None


def test_host_order() -> None:
    hosts = [Host(n, f"http://{n}", "t", (SD1,)) for n in ("a", "b", "c", "d")]
    hosts.append(Host("e", "http://e", "t", (SD2,)))
    reports = {
        "a": {"domains": {SD1: {"status": "Maintenance", "reachable": True}}},
        "b": {"domains": {SD1: {"status": "Active", "reachable": False}}},
        "c": {"domains": {SD1: {"status": "Active", "reachable": True}}},
    }
    order = [h.name for h in decide.host_order(SD1, hosts, reports)]
    assert order == ["c", "d", "a", "b"], "good, then unknown, then the rest; never e"



def _store(index: int, generation: int | None, valid: bool = True,
           error: str | None = None) -> dict[str, object]:
    record = None if generation is None else {"generation": generation, "updating": not valid}
    return {"index": index, "valid": valid, "error": error, "record": record}


@pytest.mark.parametrize("stores,why", [
    ([_store(0, 3), _store(1, 3)], None),
    ([_store(0, 3)], None),  # one store: nothing to copy
    ([], None),  # a host that lists none: nothing to say
    ([_store(0, 4), _store(1, 3)], None),  # another writer's newer archive
    ([_store(0, 3), _store(1, 3, valid=False, error="marked updating")],
     "store 1 is not valid (marked updating), not generation 3 this engine pushed to "
     "domain sd"),
    ([_store(0, 2), _store(1, 3)],
     "store 0 holds generation 2, not generation 3 this engine pushed to domain sd"),
    ([_store(0, None, valid=False), _store(1, 1)],
     "store 0 is not valid; store 1 holds generation 1, not generation 3 this engine "
     "pushed to domain sd"),  # restored from an older backup
    ([_store(0, True, valid=True), _store(1, 3)],  # a bool is no generation
     "store 0 is not valid, not generation 3 this engine pushed to domain sd"),
])
def test_copies_missing(stores: list[dict[str, object]], why: str | None) -> None:
    assert decide.copies_missing("sd", 3, {"stores": stores}) == why
    assert decide.copies_missing("sd", 3, {"stores": stores, "updating": False}) == why
    # Copies still running on the host: not missing, whatever they show now.
    assert decide.copies_missing("sd", 3, {"stores": stores, "updating": True}) is None


def test_a_store_being_written_is_not_taken_for_an_empty_one() -> None:
    """Another writer's first archive, still being received or copied,
    lists no valid store: the host says "updating", and this engine must
    not take the domain for one holding no OVF (and push over it)."""
    stores = [_store(0, 1, valid=False), _store(1, None, valid=False)]
    assert decide.foreign_store("sd", "h0", {"stores": stores, "updating": False}) is None
    why = decide.foreign_store("sd", "h0", {"stores": stores, "updating": True})
    assert why == ("host h0 is still writing an OVF store of domain sd (another update); "
                   "this engine tries again later")
