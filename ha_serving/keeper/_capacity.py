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

Not yet wired into the Keeper: each AppMaster scales its own cluster from its own
proxies today (see docs/autoscaling.md).
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
