"""Router: power of two choices under per-instance caps, table versions, accounting."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ha_serving._wire import RouteEntry, RoutingTable
from ha_serving.proxy import Router
from tests.unit.fixtures.dataplane import seeded


def table(version: int, *caps: int, service: str = "svc") -> RoutingTable:
    entries = tuple(RouteEntry(f"i{n}", f"w{n % 2}", "v1", cap) for n, cap in enumerate(caps))
    return RoutingTable(service, version, entries)


class RouterMachine(RuleBasedStateMachine):
    """Random acquires, releases and table changes (drains, additions, stale tables)."""

    def __init__(self) -> None:
        super().__init__()
        self.router = Router("svc", rng=seeded(0))
        self.version = self.router.update(RoutingTable("svc", 0))
        self.routed: dict[str, int] = {}  # instance -> cap, as in the table held
        self.held: list[str] = []  # one item per acquired, unreleased call

    @rule(caps=st.lists(st.integers(1, 4), max_size=6), keep=st.lists(st.booleans(), max_size=6))
    def new_table(self, caps: list[int], keep: list[bool]) -> None:
        """Any subset of instances stays routed (the rest drain), new ones may appear."""
        self.version += 1
        old = [
            RouteEntry(i, "w", "v1", cap)
            for (i, cap), k in zip(self.routed.items(), keep, strict=False)
            if k
        ]
        new = [RouteEntry(f"n{self.version}_{j}", "w", "v1", cap) for j, cap in enumerate(caps)]
        t = RoutingTable("svc", self.version, tuple(old + new))
        assert self.router.update(t) == self.version
        self.routed = {e.instance_id: e.max_concurrency for e in t.entries}

    @rule()
    def stale_table_is_ignored(self) -> None:
        assert self.router.update(RoutingTable("svc", self.version - 1)) == self.version

    @rule()
    def acquire(self) -> None:
        busy = Counter(self.held)
        chosen = self.router.acquire()
        free = [i for i, cap in self.routed.items() if busy[i] < cap]
        if chosen is None:
            assert not free, "refused although an instance had room"
            return
        assert chosen.instance_id in self.routed, "chose an instance absent from the table"
        assert busy[chosen.instance_id] < chosen.max_concurrency, "exceeded a cap"
        self.held.append(chosen.instance_id)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        instance = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        self.router.release(instance)

    @invariant()
    def counts_match_calls_in_flight(self) -> None:
        expected = dict.fromkeys(self.routed, 0) | dict(Counter(self.held))
        assert self.router.inflight() == expected

    def teardown(self) -> None:
        for instance in self.held:
            self.router.release(instance)
        assert set(self.router.inflight().values()) <= {0}


TestRouterMachine = RouterMachine.TestCase
TestRouterMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_two_choices_prefer_the_less_loaded_instance() -> None:
    router = Router("svc", rng=seeded(1))
    router.update(table(1, 100, 100))
    for _ in range(10):
        router.acquire(exclude={"i1"})  # load i0 only
    picks = Counter(e.instance_id for e in (router.acquire() for _ in range(5)) if e)
    assert picks == {"i1": 5}


def test_two_choices_spread_load_evenly_over_many_instances() -> None:
    router = Router("svc", rng=seeded(2))
    router.update(table(1, *[1000] * 10))
    for _ in range(1000):
        router.acquire()
    counts = router.inflight().values()
    assert max(counts) - min(counts) <= 3  # random choice alone spreads far wider


def test_no_choice_when_every_instance_is_at_its_cap() -> None:
    router = Router("svc", rng=seeded(3))
    router.update(table(1, 1, 2))
    assert [router.acquire() is not None for _ in range(4)] == [True, True, True, False]
    assert router.at_capacity()
    router.release("i1")
    chosen = router.acquire()
    assert chosen is not None
    assert chosen.instance_id == "i1"


def test_routed_counts_every_call_sent_and_never_goes_down() -> None:
    """``routed`` counts calls sent per instance; releases do not lower it (the
    killed-worker test bounds the calls in flight at a kill by its difference)."""
    router = Router("svc", rng=seeded(3))
    router.update(table(1, 5, 5))
    sent = [router.acquire() for _ in range(6)]
    assert sum(router.routed().values()) == 6
    for entry in sent:
        assert entry is not None
        router.release(entry.instance_id)
    assert router.routed() == dict(Counter(e.instance_id for e in sent if e is not None))
    assert router.inflight() == {"i0": 0, "i1": 0}


def test_empty_table_gives_no_choice_and_is_not_at_capacity() -> None:
    router = Router("svc")
    assert router.acquire() is None
    assert not router.at_capacity()
    assert router.version == -1


def test_drained_instance_is_never_chosen_but_its_inflight_stays_visible() -> None:
    router = Router("svc", rng=seeded(4))
    router.update(table(1, 5, 5))
    busy = router.acquire(exclude={"i1"})
    assert busy is not None
    assert busy.instance_id == "i0"
    router.update(RoutingTable("svc", 2, (table(1, 5, 5).entries[1],)))  # i0 drains
    assert {router.acquire().instance_id for _ in range(4)} == {"i1"}  # type: ignore[union-attr]
    assert router.inflight() == {"i0": 1, "i1": 4}
    router.release("i0")
    assert "i0" not in router.inflight()


def test_older_or_equal_table_version_is_ignored() -> None:
    router = Router("svc")
    assert router.update(table(5, 1)) == 5
    assert router.update(table(4, 1, 1)) == 5
    assert router.update(table(5, 1, 1)) == 5
    assert len(router.table.entries) == 1


def test_table_for_another_service_and_unmatched_release_are_refused() -> None:
    router = Router("svc")
    with pytest.raises(ValueError, match="sent to 'svc'"):
        router.update(table(1, 1, service="other"))
    with pytest.raises(ValueError, match="without a matching acquire"):
        router.release("i0")


def test_routing_table_round_trips_through_its_record_and_rejects_bad_values() -> None:
    t = table(3, 1, 2)
    assert RoutingTable.from_record(t.to_record()) == t
    with pytest.raises(ValueError, match="repeats"):
        RoutingTable("svc", 1, (t.entries[0], t.entries[0]))
    with pytest.raises(ValueError, match="must be >= 1"):
        RouteEntry("i", "w", "v", 0)


def grouped(weight: int, stable: int = 8, candidate: int = 2, cap: int = 100) -> RoutingTable:
    entries = [RouteEntry(f"s{n}", "w", "v1", cap) for n in range(stable)]
    entries += [RouteEntry(f"c{n}", "w", "v2", cap, group="candidate") for n in range(candidate)]
    return RoutingTable("svc", 1, tuple(entries), candidate_weight=weight)


@pytest.mark.parametrize("weight", [0, 5, 50, 100])
def test_candidate_gets_its_weight_not_its_share_of_instances(weight: int) -> None:
    """2 of 10 instances are the candidate's; the split follows the weight (±2 points)."""
    router = Router("svc", rng=seeded(1))
    router.update(grouped(weight))
    n = 10_000
    picked: Counter[str] = Counter()
    for _ in range(n):
        entry = router.acquire()
        assert entry is not None
        picked[entry.group] += 1
        router.release(entry.instance_id)
    assert abs(100 * picked["candidate"] / n - weight) <= 2


def test_a_full_group_spills_to_the_other_and_retiring_is_the_last_resort() -> None:
    entries = (
        RouteEntry("c0", "w", "v2", 1, group="candidate"),
        RouteEntry("s0", "w", "v1", 1),
        RouteEntry("r0", "w", "v0", 1, group="retiring"),
    )
    router = Router("svc", rng=seeded(2))
    router.update(RoutingTable("svc", 1, entries, candidate_weight=100))
    assert [router.acquire().instance_id for _ in range(3)] == ["c0", "s0", "r0"]  # type: ignore[union-attr]
    assert router.acquire() is None


def test_a_weight_outside_0_to_100_is_refused() -> None:
    with pytest.raises(ValueError, match="candidate_weight"):
        RoutingTable("svc", 1, (), candidate_weight=101)


def picks(router: Router, n: int) -> set[str]:
    """The instances ``n`` calls in a row go to (each released before the next)."""
    chosen = set()
    for _ in range(n):
        entry = router.acquire()
        assert entry is not None
        router.release(entry.instance_id)
        chosen.add(entry.instance_id)
    return chosen


def test_an_ejected_worker_gets_no_call_until_readmitted_and_a_table_without_it_forgets_it() -> (
    None
):
    router = Router("svc", rng=seeded(3))
    router.update(table(1, 9, 9, 9, 9))  # i0, i2 on w0; i1, i3 on w1
    assert router.eject("w0") is True
    assert router.eject("w0") is False, "already ejected: nobody starts a second probe"
    assert router.eject("w9") is False, "a worker absent from the table is not ejected"
    chosen = picks(router, 40)
    assert chosen == {"i1", "i3"}
    router.readmit("w0")
    chosen = picks(router, 200)
    assert chosen == {"i0", "i1", "i2", "i3"}
    router.eject("w1")
    router.update(RoutingTable("svc", 2, (RouteEntry("i0", "w0", "v1", 9),)))
    assert not router.ejected("w1")
    router.update(table(3, 9, 9))
    assert picks(router, 40) == {"i0", "i1"}


def test_every_worker_ejected_leaves_no_choice() -> None:
    router = Router("svc", rng=seeded(1))
    router.update(table(1, 5, 5))
    router.eject("w0")
    router.eject("w1")
    assert router.acquire() is None
    assert not router.at_capacity()
