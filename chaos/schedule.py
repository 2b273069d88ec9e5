"""Random mode's plan: faults from the catalogue, one after another, seeded.

``plan`` draws drills at random (``random.Random(seed)``: the same seed gives the same
plan) from those random mode may pick (``DrillMeta.random``), each costing its
catalogue duration (``DrillMeta.duration_s``) plus ``gap_s`` of recovery before the
next, within ``duration_s``:

1. ``min_faults`` drills drawn uniformly, drawn again (at most ``MAX_DRAWS`` times)
   until they fit in ``duration_s`` and no drill follows itself: a uniform sample of
   the sequences that fit, so heavy and light faults fall anywhere in the run;
2. (only if no draw fitted) one drill at a time, each among those that still leave room
   for the faults yet to come at the cheapest cost, which always ends with
   ``min_faults`` whenever that many of the cheapest fit at all;
3. then, while time is left, further drills that fit, never one after itself.

The estimates are cautious, so a plan usually ends before ``duration_s`` has passed;
``TopUp`` then draws further faults (from its own generator, seeded by the same seed)
that fit in the time that is really left, so that a run lasts its whole duration.

Pure, so it is unit-tested.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

from chaos.catalogue import Drill

MAX_FAULTS = 500


@dataclass(frozen=True)
class Slot:
    index: int
    """1-based place in the plan."""
    drill: str
    at_s: float
    """When it is planned to start, seconds from the run's start (by the estimates)."""
    duration_s: float
    """The catalogue's estimate of how long it takes."""


def eligible(catalogue: Sequence[Drill]) -> list[Drill]:
    """The drills random mode may pick, by name."""
    return sorted(
        (d for d in catalogue if not d.meta.control and d.meta.random), key=lambda d: d.name
    )


def plan(
    catalogue: Sequence[Drill],
    *,
    seed: int,
    duration_s: float,
    min_faults: int = 20,
    gap_s: float = 2.0,
) -> list[Slot]:
    """The seeded sequence of faults that fills ``duration_s`` (module docstring).
    ValueError when nothing is eligible or ``min_faults`` cannot fit."""
    pool = eligible(catalogue)
    if not pool:
        raise ValueError("no drill of the catalogue is eligible for random mode")
    cost = {d.name: d.meta.duration_s + gap_s for d in pool}
    cheapest = min(cost.values())
    if min_faults * cheapest > duration_s:
        raise ValueError(
            f"{min_faults} faults need at least {min_faults * cheapest:.0f} s "
            f"(the cheapest takes {cheapest:.0f} s with its gap); {duration_s:.0f} s given"
        )
    rng = random.Random(seed)  # noqa: S311 - reproducible drill order, not crypto
    chosen = _uniform(pool, cost, rng, min_faults, duration_s)
    if chosen is None:
        chosen = _greedy(pool, cost, rng, min_faults, duration_s)
    spent = sum(cost[d.name] for d in chosen)
    while len(chosen) < MAX_FAULTS:
        last = chosen[-1].name if chosen else None
        fits = [d for d in pool if cost[d.name] <= duration_s - spent and d.name != last]
        if not fits:
            break
        chosen.append(rng.choice(fits))
        spent += cost[chosen[-1].name]
    slots = []
    at = 0.0
    for i, d in enumerate(chosen, 1):
        slots.append(Slot(i, d.name, at, d.meta.duration_s))
        at += cost[d.name]
    return slots


MAX_DRAWS = 2000


def _uniform(
    pool: Sequence[Drill], cost: dict[str, float], rng: random.Random, n: int, budget: float
) -> list[Drill] | None:
    """``n`` drills drawn uniformly until a draw fits ``budget`` with no drill after
    itself; None after ``MAX_DRAWS`` draws."""
    for _ in range(MAX_DRAWS):
        draw = [rng.choice(pool) for _ in range(n)]
        repeats = any(a.name == b.name for a, b in itertools.pairwise(draw))
        if not repeats and sum(cost[d.name] for d in draw) <= budget:
            return draw
    return None


def _greedy(
    pool: Sequence[Drill], cost: dict[str, float], rng: random.Random, n: int, budget: float
) -> list[Drill]:
    """``n`` drills, each among those that leave room for the rest at the cheapest cost
    (and not the one before, when another fits)."""
    cheapest = min(cost.values())
    chosen: list[Drill] = []
    spent = 0.0
    for i in range(n):
        room = budget - spent - (n - i - 1) * cheapest
        fits = [d for d in pool if cost[d.name] <= room]
        last = chosen[-1].name if chosen else None
        pick = rng.choice([d for d in fits if d.name != last] or fits)
        chosen.append(pick)
        spent += cost[pick.name]
    return chosen


class TopUp:
    """Faults after the plan, while the run's real time allows: each drawn uniformly among
    the eligible drills whose estimate fits in what is left (``room_s``) and that are not
    the one just run. Its own generator, seeded from the run's seed, so the plan itself is
    the same with or without top-ups; which top-ups come depends on how long the plan
    really took."""

    def __init__(self, catalogue: Sequence[Drill], *, seed: int, gap_s: float = 2.0) -> None:
        self._pool = eligible(catalogue)
        self._cost = {d.name: d.meta.duration_s + gap_s for d in self._pool}
        self._rng = random.Random(f"top-up-{seed}")  # noqa: S311 - reproducible, not crypto

    def next(self, *, last: str | None, room_s: float) -> Drill | None:
        """The next fault, or None when none fits in ``room_s``."""
        fits = [d for d in self._pool if self._cost[d.name] <= room_s and d.name != last]
        return self._rng.choice(fits) if fits else None
