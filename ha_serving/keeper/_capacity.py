"""Decide purely how a service's instances are spread over its clusters:
``split(total, clusters) -> Split``.

Each live cluster gets a share of ``total`` in proportion to its traffic weight (the
weight clients spill over by), within its own bounds: at least its ``floor`` (its
autoscaling minimum), at most its ``cap`` (what it can grow to: its maximum, or what
its nodes hold). A cluster that cannot grow further leaves the rest to the others,
and a lost cluster gets nothing, so its share goes to the survivors.

Instances are handed out one at a time to the cluster whose count is furthest below
its proportional share (Sainte-Laguë's divisor, ``weight / (count + 0.5)``): a divisor
method is *house-monotone*, so a larger total never takes an instance from any
cluster (largest-remainder methods can: the Alabama paradox), and the counts are as
proportional as whole instances allow.

``floors(clusters)`` is what the leader uses (``_reconciler.Reconciler._spread_capacity``):
each AppMaster scales its own cluster from its own proxies, and the leader splits only
the demand no cluster is serving (a lost cluster's, what a full one lacks) over the
others, as floors under their counts (docs/autoscaling.md, "Across clusters").
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ClusterRoom:
    weight: int
    """Traffic weight (0..1000); 0: the cluster takes no traffic, so only its floor."""
    cap: int
    """Most instances it can run."""
    floor: int = 0
    """Fewest instances it runs while alive."""
    alive: bool = True


@dataclass(frozen=True)
class Split:
    counts: dict[str, int]
    unplaced: int
    """Instances of ``total`` no live cluster had room for."""


def split(total: int, clusters: Mapping[str, ClusterRoom]) -> Split:
    """``total`` instances (at least the live clusters' floors) over ``clusters``."""
    counts = dict.fromkeys(clusters, 0)
    live = {n: c for n, c in clusters.items() if c.alive}
    for name, c in live.items():
        counts[name] = min(c.floor, c.cap)
    left = max(0, total - sum(counts.values()))
    heap = [(-_priority(c.weight, counts[n]), n) for n, c in live.items() if _room(c, counts[n])]
    heapq.heapify(heap)
    while left > 0 and heap:
        _, name = heapq.heappop(heap)
        counts[name] += 1
        left -= 1
        c = live[name]
        if _room(c, counts[name]):
            heapq.heappush(heap, (-_priority(c.weight, counts[name]), name))
    return Split(counts, left)


def _room(c: ClusterRoom, count: int) -> bool:
    return c.weight > 0 and count < c.cap


def _priority(weight: int, count: int) -> float:
    return weight / (count + 0.5)


@dataclass(frozen=True)
class ClusterDemand:
    """One cluster's side of an autoscaled service, as its AppMaster's state shows it."""

    weight: int
    """Its traffic weight (clients spill over by it)."""
    demand: int
    """What its own autoscaler asks for from its own proxies' figures (before any floor)."""
    serving: int
    """Instances serving there now."""
    max_instances: int
    alive: bool = True
    """False: the leader declared the cluster lost."""
    stuck: bool = False
    """It has served fewer instances than it decided for longer than the Keeper waits
    (``KeeperSettings.capacity_stuck_s``): it cannot grow (out of resources)."""


@dataclass(frozen=True)
class Floor:
    count: int
    """Fewest instances the cluster's autoscaler may decide (0: no floor)."""
    reason: str


def unmet_sources(clusters: Mapping[str, ClusterDemand]) -> bool:
    """Whether any cluster's demand is unmet (lost, or stuck short of it)."""
    return any(
        (not c.alive and c.demand > 0) or (c.alive and c.stuck and c.demand > c.serving)
        for c in clusters.values()
    )


def takers_demand(clusters: Mapping[str, ClusterDemand]) -> int:
    """The own demand of the clusters that can take unmet demand (alive, growing)."""
    return sum(c.demand for c in clusters.values() if c.alive and not c.stuck)


def floors(
    clusters: Mapping[str, ClusterDemand], *, absorbed: int = 0
) -> tuple[dict[str, Floor], int]:
    """The floor under each cluster's count, and the instances no cluster had room for.

    Each cluster's autoscaler already follows its own traffic, which follows the traffic
    weights; what it cannot see is demand no cluster is serving: a lost cluster's whole
    demand (its clients are moving to the others), and what a stuck cluster asked for
    beyond what it serves. That *unmet* demand is ``split`` over the live clusters that
    can grow, by weight, within each one's room (``max_instances - demand``), and each
    such cluster's floor is its own demand plus its share, so it starts the instances
    before its own figures show the load. Everyone else gets no floor (0). A floor only
    raises a count (the AppMaster takes the larger): it never moves load away.

    ``absorbed``: how much the others' own demand grew since the demand went unmet (the
    caller's baseline): the unmet calls' clients moving to them show up there, in their
    own figures, and must not be counted twice; the floors bridge the time until they do.

    Not the whole demand split by weight: traffic is not always proportional to the
    weights (clients are not), and such a split would run instances where no calls
    arrive while the busy cluster's own autoscaler asks for its own count anyway."""
    unmet: dict[str, int] = {}
    for name, c in clusters.items():
        if not c.alive and c.demand > 0:
            unmet[name] = c.demand
        elif c.alive and c.stuck and c.demand > c.serving:
            unmet[name] = c.demand - c.serving
    rooms = {
        n: ClusterRoom(weight=c.weight, cap=max(0, c.max_instances - c.demand))
        for n, c in clusters.items()
        if c.alive and not c.stuck
    }
    total = max(0, sum(unmet.values()) - absorbed)
    shares = split(total, rooms)
    why = ", ".join(
        f"{n} {'lost' if not clusters[n].alive else 'cannot grow'} ({k} unmet)"
        for n, k in sorted(unmet.items())
    ) + (f", {absorbed} absorbed by the others' own demand" if absorbed else "")
    out = {n: Floor(0, "") for n in clusters}
    for name, extra in shares.counts.items():
        if extra > 0:
            c = clusters[name]
            out[name] = Floor(
                c.demand + extra,
                f"{c.demand} own + {extra} of {total} unmet: {why}",
            )
    return out, shares.unplaced
