"""Judging the autoscaling scenarios (pure; unit-tested on hand-made timelines).

Every time is in seconds since the trace's start (T0, the same for the four services);
every figure is over the trace's judged window ``[start, end)`` (``Trace.judged``).

- **Violation second**: a whole second ``k`` (the calls that *started* in ``[k, k+1)``)
  with at least one failed call, or whose p99 latency (nearest rank over that second's
  calls) is above the SLO. A second without calls is not one.
- **Instance-seconds** (the cost): the integral over the window of the instances the
  service's AppMaster has recorded in its state, in any phase (starting, serving,
  draining: each holds a worker's slot), sampled about once a second and held until the
  next sample.
- **Flip**: a change of the count in the other direction than the change before it (up
  after down, down after up), from the service's ``autoscale`` events (every change, at
  its exact time; the direction before the window counts). Judged as the most flips in
  any 10 minutes of the window (sliding), also reported per 10 minutes on average.
- **Time to capacity** (step-5x): seconds from the step (the trace's first second at the
  higher load; Locust applies it within that second) to the first sample at which the
  *serving* instances are at least what the new load needs at the service's target:
  ``ceil(step x in-flight at 1x / target_inflight)``, the in-flight at 1x being the
  offered rate times each call's hold (nominal, not measured). None if never. Its
  resolution is the sampling period. **Time to decision** is the same with the count
  the autoscaler decided (the state's wanted count) instead of the serving one; the
  difference is the instances' start time as this stack showed it.

Goals (issue 13; ``goals``): on step-5x ours reactive reaches capacity within its
``instance_start_s`` + 5 s; on diurnal ours predictive has at least 36 % fewer
violation seconds than the Ray-Serve-like baseline at no more than 10 % more
instance-seconds; on noise ours (reactive and predictive) flips at most once in any
10 minutes. A goal that cannot be judged (a baseline without a violation second has
nothing to cut) is not met.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from loadtest.sla import Record, percentile

POLICIES = ("static", "baseline", "reactive", "predictive")
"""The four services of a run, side by side on the same trace."""

GOAL_CUT = 0.36
"""Ours predictive: at least this share fewer violation seconds than the baseline."""
GOAL_COST = 0.10
"""... at no more than this share more instance-seconds."""
GOAL_START_SLACK_S = 5.0
"""Ours reactive: capacity within instance_start_s plus this after a step."""
GOAL_FLIPS = 1
"""Ours: at most this many flips in any ``FLIP_WINDOW_S``."""
FLIP_WINDOW_S = 600.0
EPSILON = 1e-9
"""A ratio exactly at its bound meets it (11 / 10 - 1 is not quite 0.1 in floats)."""


@dataclass(frozen=True)
class Second:
    t: float
    requests: int
    failures: int
    p99_ms: float


@dataclass(frozen=True)
class Sample:
    """A service's counts read from its AppMaster's state at ``t``."""

    t: float
    wanted: int
    """The count decided (the spec's, or the autoscaler's)."""
    serving: int
    existing: int
    """Instances recorded in any phase."""


def seconds_of(records: Sequence[Record], t0: float, start: float, end: float) -> list[Second]:
    """Calls per whole second of ``[start, end)``, by start time relative to ``t0``."""
    buckets: dict[int, list[Record]] = {}
    for r in records:
        k = math.floor(r.start - t0)
        if start <= k < end:
            buckets.setdefault(k, []).append(r)
    out = []
    for k in range(math.ceil(start), math.ceil(end)):
        rs = buckets.get(k, [])
        lat = sorted(r.latency_ms for r in rs)
        out.append(Second(float(k), len(rs), sum(not r.ok for r in rs), percentile(lat, 99)))
    return out


def violations(seconds: Sequence[Second], slo_p99_ms: float) -> list[float]:
    """The seconds with a failure, or a p99 above ``slo_p99_ms``."""
    return [s.t for s in seconds if s.requests and (s.failures > 0 or s.p99_ms > slo_p99_ms)]


def instance_seconds(samples: Sequence[tuple[float, int]], start: float, end: float) -> float:
    """The integral over ``[start, end)`` of a count sampled at times (ascending), each
    held until the next; before the first sample, the first one's count."""
    if not samples or end <= start:
        return 0.0
    total = 0.0
    for k, (t, n) in enumerate(samples):
        a = start if k == 0 else max(t, start)
        b = samples[k + 1][0] if k + 1 < len(samples) else end
        b = min(b, end)
        if b > a:
            total += n * (b - a)
    return total


def flips(changes: Sequence[tuple[float, int, int]]) -> list[float]:
    """The times of the changes ``(t, from, to)`` (in time order) whose direction is not
    the previous change's."""
    out, last = [], 0
    for t, before, after in changes:
        step = (after > before) - (after < before)
        if step and last and step != last:
            out.append(t)
        last = step or last
    return out


def changes_of(samples: Sequence[tuple[float, int]]) -> list[tuple[float, int, int]]:
    """A sampled count's changes ``(t, from, to)``."""
    return [(t, a, b) for (_, a), (t, b) in itertools.pairwise(samples) if a != b]


def most_within(times: Sequence[float], width: float) -> int:
    """The most of ``times`` in any half-open span ``[t, t + width)``."""
    ordered = sorted(times)
    best, first = 0, 0
    for k, t in enumerate(ordered):
        while ordered[first] <= t - width:
            first += 1
        best = max(best, k - first + 1)
    return best


def first_reaching(samples: Sequence[tuple[float, int]], after: float, needed: int) -> float | None:
    """Seconds from ``after`` to the first sample at or after it whose count is at
    least ``needed``; None if none is."""
    for t, n in samples:
        if t >= after and n >= needed:
            return t - after
    return None


def needed_after_step(step: float, inflight_1x: float, target: float) -> int:
    """Instances a load of ``step`` x the 1x in-flight calls needs at ``target`` each."""
    return max(1, math.ceil(step * inflight_1x / target - 1e-9))


@dataclass(frozen=True)
class Figures:
    policy: str
    service: str
    violation_s: int
    instance_s: float
    flips: int
    most_flips_10min: int
    flips_per_10min: float
    capacity_s: float | None
    decided_s: float | None
    needed: int | None
    requests: int
    failures: int
    p99_ms: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def figures(
    policy: str,
    service: str,
    *,
    records: Sequence[Record],
    samples: Sequence[Sample],
    changes: Sequence[tuple[float, int, int]],
    t0: float,
    window: tuple[float, float],
    slo_p99_ms: float,
    step_at: float | None = None,
    needed: int | None = None,
) -> Figures:
    """One service's figures over ``window`` (see the module's text). ``changes`` are
    its autoscaler's changes of count, ``(t since t0, from, to)``, all of them (those
    before the window give the direction it starts with)."""
    start, end = window
    seconds = seconds_of(records, t0, start, end)
    flipped = [t for t in flips(changes) if start <= t < end]
    in_window = [r for r in records if start <= r.start - t0 < end]
    latencies = sorted(r.latency_ms for r in in_window)
    capacity = decided = None
    if step_at is not None and needed is not None:
        capacity = first_reaching([(s.t, s.serving) for s in samples], step_at, needed)
        decided = first_reaching([(s.t, s.wanted) for s in samples], step_at, needed)
    return Figures(
        policy=policy,
        service=service,
        violation_s=len(violations(seconds, slo_p99_ms)),
        instance_s=instance_seconds([(s.t, s.existing) for s in samples], start, end),
        flips=len(flipped),
        most_flips_10min=most_within(flipped, FLIP_WINDOW_S),
        flips_per_10min=len(flipped) / max(end - start, 1.0) * FLIP_WINDOW_S,
        capacity_s=capacity,
        decided_s=decided,
        needed=needed,
        requests=len(in_window),
        failures=sum(not r.ok for r in in_window),
        p99_ms=percentile(latencies, 99),
    )


@dataclass(frozen=True)
class Goal:
    text: str
    figure: str
    met: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def cut(ours: Figures, baseline: Figures) -> float | None:
    """The share of the baseline's violation seconds that ``ours`` did not have (None
    when the baseline had none: nothing to cut)."""
    if baseline.violation_s == 0:
        return None
    return 1.0 - ours.violation_s / baseline.violation_s


def extra_cost(ours: Figures, baseline: Figures) -> float | None:
    """``ours``' instance-seconds over the baseline's, minus 1 (None: the baseline had
    none)."""
    if baseline.instance_s <= 0:
        return None
    return ours.instance_s / baseline.instance_s - 1.0


def goals(
    scenario: str, by_policy: Mapping[str, Figures], *, instance_start_s: float
) -> list[Goal]:
    """The issue's goals that ``scenario`` judges, each with its figure."""
    if scenario == "step-5x":
        reactive = by_policy["reactive"]
        bound = instance_start_s + GOAL_START_SLACK_S
        got = reactive.capacity_s
        return [
            Goal(
                f"ours reactive reaches capacity within instance_start_s + "
                f"{GOAL_START_SLACK_S:g} s = {bound:g} s of the step",
                "never" if got is None else f"{got:.0f} s",
                got is not None and got <= bound,
            )
        ]
    if scenario == "diurnal":
        pred, base = by_policy["predictive"], by_policy["baseline"]
        c, x = cut(pred, base), extra_cost(pred, base)
        return [
            Goal(
                f"ours predictive has >= {GOAL_CUT:.0%} fewer SLO-violation seconds than the "
                "Ray-Serve-like baseline",
                (
                    "not judged: the baseline had no violation second"
                    if c is None
                    else f"{c:.0%} ({pred.violation_s} s vs {base.violation_s} s)"
                ),
                c is not None and c >= GOAL_CUT - EPSILON,
            ),
            Goal(
                f"... at <= +{GOAL_COST:.0%} instance-seconds",
                (
                    "not judged: the baseline had no instance"
                    if x is None
                    else f"{x:+.0%} ({pred.instance_s:.0f} vs {base.instance_s:.0f})"
                ),
                x is not None and x <= GOAL_COST + EPSILON,
            ),
        ]
    if scenario == "noise":
        return [
            Goal(
                f"ours {p}: at most {GOAL_FLIPS} flip in any {FLIP_WINDOW_S / 60:g} min",
                f"{by_policy[p].most_flips_10min} (of {by_policy[p].flips} in all)",
                by_policy[p].most_flips_10min <= GOAL_FLIPS,
            )
            for p in ("reactive", "predictive")
        ]
    raise ValueError(f"no goals for scenario {scenario!r}")
