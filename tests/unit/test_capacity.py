"""Spreading a service's instances over clusters by traffic weight (``keeper._capacity``):
proportional within each cluster's bounds, the others take what a full cluster cannot,
survivors take a lost cluster's share, and a larger total never takes an instance away."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ha_serving.keeper._capacity import (
    ClusterDemand,
    ClusterRoom,
    floors,
    split,
    takers_demand,
    unmet_sources,
)

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


# --- floors: demand no cluster is serving goes to the others -------------------------

demands = st.dictionaries(
    st.sampled_from(["a", "b", "c"]),
    st.builds(
        ClusterDemand,
        weight=st.integers(0, 1000),
        demand=st.integers(0, 30),
        serving=st.integers(0, 30),
        max_instances=st.integers(1, 40),
        alive=st.booleans(),
        stuck=st.booleans(),
    ),
    min_size=1,
)


def _unmet(clusters: dict[str, ClusterDemand]) -> int:
    return sum(
        c.demand if not c.alive else max(0, c.demand - c.serving) if c.stuck else 0
        for c in clusters.values()
    )


def test_with_every_cluster_alive_and_growing_there_is_no_floor() -> None:
    found, unplaced = floors({"a": ClusterDemand(50, 6, 6, 10), "b": ClusterDemand(50, 2, 1, 10)})
    assert {n: f.count for n, f in found.items()} == {"a": 0, "b": 0}
    assert unplaced == 0


def test_a_lost_clusters_demand_goes_to_the_survivors_by_weight() -> None:
    """b (4 instances) is lost: a and c, weights 3:1, take 3 and 1 on top of their own."""
    found, unplaced = floors(
        {
            "a": ClusterDemand(300, 2, 2, 20),
            "b": ClusterDemand(100, 4, 4, 20, alive=False),
            "c": ClusterDemand(100, 5, 5, 20),
        }
    )
    assert {n: f.count for n, f in found.items()} == {"a": 2 + 3, "b": 0, "c": 5 + 1}
    assert unplaced == 0
    assert found["a"].reason == "2 own + 3 of 4 unmet: b lost (4 unmet)"


def test_demand_the_others_absorbed_is_not_placed_twice() -> None:
    clusters = {
        "a": ClusterDemand(100, 5, 5, 20),
        "b": ClusterDemand(100, 4, 4, 20, alive=False),
    }
    assert floors(clusters, absorbed=3)[0]["a"].count == 5 + 1
    assert floors(clusters, absorbed=4)[0]["a"].count == 0
    assert floors(clusters, absorbed=9) == floors(clusters, absorbed=4)
    assert unmet_sources(clusters)
    assert takers_demand(clusters) == 5
    assert not unmet_sources({"a": clusters["a"]})


def test_a_cluster_that_cannot_grow_leaves_what_it_lacks_to_the_others() -> None:
    """a decided 8 but serves 5 for too long: its 3 go to b, up to b's maximum (6 own + 3
    > 8: 1 unplaced)."""
    found, unplaced = floors(
        {"a": ClusterDemand(50, 8, 5, 10, stuck=True), "b": ClusterDemand(50, 6, 6, 8)}
    )
    assert (found["a"].count, found["b"].count, unplaced) == (0, 8, 1)
    assert "a cannot grow (3 unmet)" in found["b"].reason


@given(demands, st.integers(0, 50))
@settings(max_examples=300, deadline=None)
def test_floors_place_the_unmet_demand_within_each_clusters_maximum(
    clusters: dict[str, ClusterDemand], absorbed: int
) -> None:
    found, unplaced = floors(clusters, absorbed=absorbed)
    assert set(found) == set(clusters)
    extra = 0
    for name, f in found.items():
        c = clusters[name]
        if f.count == 0:
            continue
        assert c.alive  # only a cluster that can take it
        assert not c.stuck
        assert c.weight > 0
        assert c.demand < f.count <= c.max_instances  # above its own demand, within its max
        extra += f.count - c.demand
    # every unmet instance not absorbed by the others' own demand is placed or reported
    assert extra + unplaced == max(0, _unmet(clusters) - absorbed)


@given(demands, st.sampled_from(["a", "b", "c"]), st.integers(1, 10))
@settings(max_examples=200, deadline=None)
def test_more_demand_on_a_lost_cluster_never_lowers_a_floor(
    clusters: dict[str, ClusterDemand], lost: str, more: int
) -> None:
    """House-monotone, as ``split``: a larger unmet demand takes no instance away."""
    if lost not in clusters:
        return
    before = clusters[lost]
    clusters = {**clusters, lost: ClusterDemand(before.weight, before.demand, 0, 40, alive=False)}
    grown = {
        **clusters,
        lost: ClusterDemand(before.weight, before.demand + more, 0, 40, alive=False),
    }
    low, _ = floors(clusters)
    high, _ = floors(grown)
    assert all(high[n].count >= low[n].count for n in clusters)
