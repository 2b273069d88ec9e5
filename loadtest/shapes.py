"""Load traces of the autoscaling scenarios (pure, deterministic given a seed;
unit-tested): the load of each second of a run as a multiple of the 1x load, and the
Locust user count that offers it.

A trace is a list of per-second multipliers, ``levels[k]`` for second ``k`` of the run;
``users(t, users_1x)`` is ``round(users_1x * level)``. Each user calls at a fixed rate
(``loadtest/locustfile.py``, ``HA_LOADTEST_USER_RATE``), so the offered rate follows the
user count. ``loadtest/autoscale_locustfile.py`` plays a trace as a Locust
``LoadTestShape``; ``loadtest/autoscale.py`` plays the same trace at each service.

Scenarios (``compress`` divides every duration, nothing else):

- ``step-5x``: 1x for ``pre_s`` (180 s), then ``step`` (5) x at once, held ``hold_s``
  (240 s). No noise: the step is the only change, at second ``step_at``.
- ``diurnal``: a compressed day of ``cycle_s`` (1200 s, i.e. 20 min), played ``cycles``
  times. Night at 1x, a morning rise to ``step`` x (smoothstep over 15 % of the day),
  the day at ``step`` x, an evening fall (20 %) and night again; each ``noise_period_s``
  (5 s) the level is multiplied by a factor drawn uniformly within ``1 +- noise``
  (20 %); and in the last cycle only, one burst of ``burst`` (2) x the level for 5 % of
  the day, starting at a drawn time between 10 % and 80 % of it. The burst is what a
  forecast cannot know: ``history`` (the previous days the forecast learns from) has
  the same curve with other noise and no burst.
- ``noise``: a flat ``level`` (3) x with the same noise, for ``SETTLE_S`` (360 s, not
  compressed: our stable window plus scale-down delay) that are not judged, then
  ``NOISE_S`` (1800 s) that are. The services start at the count the mean needs, but
  an autoscaler may have scaled in while it waited, without load, for the deploys to
  finish; whatever it does to settle is not judged.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any

SCENARIOS = ("step-5x", "diurnal", "noise")

PRE_S = 180.0
HOLD_S = 240.0
CYCLE_S = 1200.0
NOISE_S = 1800.0
SETTLE_S = 360.0
"""The noise scenario's first seconds, not judged: ours' stable window (60 s) plus its
scale-down delay (300 s), so a count moved before the load came has settled."""
DAY = ((0.20, "night"), (0.35, "rise"), (0.65, "day"), (0.85, "fall"), (1.00, "night"))
"""The diurnal curve's phases: each ends at this fraction of the day."""
BURST_SHARE = 0.05
BURST_WINDOW = (0.10, 0.80)
"""Where in the day the burst may start (fractions of the day), drawn from the seed."""


@dataclass(frozen=True)
class TraceParams:
    """Everything a trace is made from: the same params, the same trace."""

    scenario: str
    seed: int = 1
    compress: float = 1.0
    """Every duration of the scenario divided by this (2: a 20 min day plays in 10)."""
    step: float = 5.0
    """The step's height (step-5x) and the day's peak (diurnal), x the 1x load."""
    level: float = 3.0
    """The noise scenario's mean, x the 1x load."""
    noise: float = 0.2
    """Each noise period's factor is drawn uniformly from 1 - noise .. 1 + noise."""
    noise_period_s: float = 5.0
    """Seconds each noise factor holds (not compressed: it is the load's grain)."""
    burst: float = 2.0
    """The diurnal burst multiplies the level by this."""
    cycles: int = 1
    """Diurnal days played; the burst is in the last one only."""

    def __post_init__(self) -> None:
        problems = []
        if self.scenario not in SCENARIOS:
            problems.append(f"scenario {self.scenario!r} is not one of {', '.join(SCENARIOS)}")
        if not 0 < self.compress <= 100:
            problems.append(f"compress {self.compress:g} must be in (0, 100]")
        if not 0 <= self.noise < 1:
            problems.append(f"noise {self.noise:g} must be in [0, 1)")
        if self.noise_period_s < 1:
            problems.append(f"noise_period_s {self.noise_period_s:g} must be at least 1")
        if self.step <= 0 or self.level <= 0 or self.burst < 1:
            problems.append("step and level must be > 0 and burst >= 1")
        if self.cycles < 1:
            problems.append(f"cycles {self.cycles} must be at least 1")
        if problems:
            raise ValueError("; ".join(problems))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Trace:
    params: TraceParams
    levels: tuple[float, ...]
    """Multiple of the 1x load for each second of the run."""
    step_at: float | None = None
    """step-5x: the first second at the stepped load."""
    burst: tuple[float, float] | None = None
    """diurnal: (start, end) seconds of the burst."""
    marks: dict[str, float] = field(default_factory=dict)
    """Named moments (seconds) the report draws: the step, the burst, each day's start."""

    @property
    def duration_s(self) -> float:
        return float(len(self.levels))

    @property
    def peak(self) -> float:
        return max(self.levels)

    @property
    def judged(self) -> tuple[float, float]:
        """The seconds the goals are judged on: the whole run; a diurnal run's last day
        (the days before it are history the forecast learns from); noise after its
        ``SETTLE_S``."""
        if self.params.scenario == "diurnal":
            cycle = self.duration_s / self.params.cycles
            return (self.duration_s - cycle, self.duration_s)
        if self.params.scenario == "noise":
            return (SETTLE_S, self.duration_s)
        return (0.0, self.duration_s)

    def level(self, t: float) -> float:
        """The multiplier at ``t`` seconds into the run (the first before 0, the last
        after the end)."""
        k = min(max(math.floor(t), 0), len(self.levels) - 1)
        return self.levels[k]

    def users(self, t: float, users_1x: int) -> int:
        """Locust users at ``t``: the 1x count times the level, rounded."""
        return users_for(self.level(t), users_1x)


def users_for(level: float, users_1x: int) -> int:
    return round(users_1x * level)


def build(p: TraceParams) -> Trace:
    """The trace of ``p``; the same ``p``, the same trace."""
    if p.scenario == "step-5x":
        pre, hold = round(PRE_S / p.compress), round(HOLD_S / p.compress)
        return Trace(p, (1.0,) * pre + (p.step,) * hold, step_at=float(pre), marks={"step": pre})
    rng = random.Random(f"{p.scenario}:{p.seed}")  # noqa: S311 - a load trace, not a secret
    if p.scenario == "noise":
        flat = [p.level] * round(SETTLE_S + NOISE_S / p.compress)
        return Trace(p, tuple(_noisy(flat, p, rng)), marks={"judged from": SETTLE_S})
    cycle = round(CYCLE_S / p.compress)
    days = [d for _ in range(p.cycles) for d in _day(cycle, p.step)]
    levels = _noisy(days, p, rng)
    start = (p.cycles - 1) * cycle + round(rng.uniform(*BURST_WINDOW) * cycle)
    end = start + max(1, round(BURST_SHARE * cycle))
    levels[start:end] = [x * p.burst for x in levels[start:end]]
    marks = {f"day {k + 1}": float(k * cycle) for k in range(p.cycles)}
    marks["burst"] = float(start)
    return Trace(p, tuple(levels), burst=(float(start), float(end)), marks=marks)


def history(p: TraceParams, days: int) -> list[float]:
    """Per-second levels of ``days`` diurnal days before the run (oldest first): the same
    curve, noise from other seeds, no burst; what a forecast could have learnt."""
    if p.scenario != "diurnal":
        raise ValueError(f"only diurnal has a history, not {p.scenario}")
    cycle = round(CYCLE_S / p.compress)
    out: list[float] = []
    for k in range(days):
        rng = random.Random(f"{p.scenario}:{p.seed}:history:{k}")  # noqa: S311 - not a secret
        out.extend(_noisy(_day(cycle, p.step), p, rng))
    return out


def _day(cycle: int, peak: float) -> list[float]:
    """One day of ``cycle`` seconds: 1x at night, ``peak`` x by day, smooth between."""
    out = []
    for k in range(cycle):
        x, begin = k / cycle, 0.0
        for end, phase in DAY:
            if x < end:
                u = (x - begin) / (end - begin)
                smooth = u * u * (3 - 2 * u)
                height = {"night": 0.0, "rise": smooth, "day": 1.0, "fall": 1.0 - smooth}
                out.append(1.0 + (peak - 1.0) * height[phase])
                break
            begin = end
    return out


def _noisy(levels: list[float], p: TraceParams, rng: random.Random) -> list[float]:
    """``levels`` times a factor within 1 +- noise, a new one each noise period."""
    period = round(p.noise_period_s)
    factors = [rng.uniform(1 - p.noise, 1 + p.noise) for _ in range(0, len(levels), period)]
    return [x * factors[k // period] for k, x in enumerate(levels)]
