"""Spreading a service's instances over clusters by traffic weight (``keeper._capacity``):
proportional within each cluster's bounds, the others take what a full cluster cannot,
survivors take a lost cluster's share, and a larger total never takes an instance away."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ha_serving.keeper._capacity import ClusterRoom, split

rooms = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]),
    st.builds(
        ClusterRoom,
        weight=st.integers(0, 1000),
        cap=st.integers(0, 200),
        floor=st.integers(0, 5),
        alive=st.booleans(),
    ),
    min_size=1,
)


def test_in_proportion_to_weight() -> None:
    rooms = {"a": ClusterRoom(300, 100), "b": ClusterRoom(100, 100)}
    assert split(40, rooms).counts == {"a": 30, "b": 10}


def test_a_cluster_that_cannot_grow_leaves_the_demand_to_the_others() -> None:
    rooms = {"a": ClusterRoom(300, 12), "b": ClusterRoom(100, 100)}
    assert split(40, rooms).counts == {"a": 12, "b": 28}


def test_after_a_cluster_is_lost_the_survivors_scale_up() -> None:
    before = {"a": ClusterRoom(100, 50), "b": ClusterRoom(100, 50), "c": ClusterRoom(100, 50)}
    assert split(30, before).counts == {"a": 10, "b": 10, "c": 10}
    lost = {**before, "b": ClusterRoom(100, 50, alive=False)}
    assert split(30, lost).counts == {"a": 15, "b": 0, "c": 15}


def test_what_no_cluster_can_hold_is_reported() -> None:
    found = split(30, {"a": ClusterRoom(100, 10), "b": ClusterRoom(100, 5)})
    assert (found.counts, found.unplaced) == ({"a": 10, "b": 5}, 15)


@settings(max_examples=300, deadline=None)
@given(rooms, st.integers(0, 600))
def test_within_bounds_and_all_placed_that_fits(rooms: dict[str, ClusterRoom], total: int) -> None:
    found = split(total, rooms)
    for name, c in rooms.items():
        n = found.counts[name]
        if not c.alive:
            assert n == 0
        else:
            assert min(c.floor, c.cap) <= n <= c.cap
            if c.weight == 0:
                assert n == min(c.floor, c.cap)
    room = sum(c.cap for c in rooms.values() if c.alive and c.weight > 0) + sum(
        min(c.floor, c.cap) for c in rooms.values() if c.alive and c.weight == 0
    )
    floors = sum(min(c.floor, c.cap) for c in rooms.values() if c.alive)
    assert sum(found.counts.values()) == min(max(total, floors), room)
    assert found.unplaced == max(0, total - sum(found.counts.values()))


@settings(max_examples=300, deadline=None)
@given(rooms, st.integers(0, 600))
def test_a_larger_total_takes_no_instance_from_any_cluster(
    rooms: dict[str, ClusterRoom], total: int
) -> None:
    smaller, larger = split(total, rooms).counts, split(total + 1, rooms).counts
    assert all(larger[n] >= smaller[n] for n in rooms)


@settings(max_examples=300, deadline=None)
@given(rooms, st.integers(0, 600))
def test_uncapped_clusters_are_as_proportional_as_whole_instances_allow(
    rooms: dict[str, ClusterRoom], total: int
) -> None:
    """Sainte-Laguë's bound: between two live clusters above their floor and below
    their cap, (count - 0.5) / weight never exceeds the other's (count + 0.5) / weight."""
    counts = split(total, rooms).counts
    free = [
        (counts[n], c.weight)
        for n, c in rooms.items()
        if c.alive and c.weight > 0 and min(c.floor, c.cap) < counts[n] < c.cap
    ]
    for ci, wi in free:
        for cj, wj in free:
            assert (ci - 0.5) / wi <= (cj + 0.5) / wj + 1e-9


@settings(max_examples=200, deadline=None)
@given(rooms, st.integers(0, 600), st.sampled_from(["a", "b", "c", "d"]))
def test_losing_a_cluster_never_shrinks_a_survivor(
    rooms: dict[str, ClusterRoom], total: int, lost: str
) -> None:
    if lost not in rooms:
        return
    before = split(total, rooms).counts
    after = split(total, {**rooms, lost: ClusterRoom(0, 0, alive=False)}).counts
    assert all(after[n] >= before[n] for n in rooms if n != lost)
