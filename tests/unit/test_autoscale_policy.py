"""The reactive autoscaling policy, pure and in fake time: Hypothesis properties (never
outside min..max, monotone in load, scale-in only after its windows) and simulations
(a 5x load step is served within instance start time + 5 s; +-20 % noise flips the
direction at most once per 10 minutes)."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from ha_serving._spec import AutoscalingPolicy
from ha_serving.appmaster._autoscale import Decision, Reading, ScalerMemory, decide

POLICY = AutoscalingPolicy(min_instances=1, max_instances=100, target_inflight=8)


@dataclass
class Sim:
    """A service in fake time: the autoscaler decides once a second; an instance it asks
    for serves ``start_s`` later; the proxies see the offered in-flight calls, capped at
    ``max_concurrency`` per serving instance (beyond that they shed)."""

    policy: AutoscalingPolicy
    current: int
    start_s: float = 10.0
    max_concurrency: int = 64
    memory: ScalerMemory = field(default_factory=ScalerMemory)
    ready: list[tuple[float, int]] = field(default_factory=list)
    """(time the count was decided, count): serving once start_s has passed."""
    decisions: list[Decision] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ready.append((-math.inf, self.current))

    def serving(self, t: float) -> int:
        """Instances serving at ``t``: a scale-out counts once started, a scale-in at once."""
        count = self.ready[0][1]
        for at, n in self.ready[1:]:
            if n < count or at + self.start_s <= t:
                count = n
        return count

    def run(self, load: Callable[[float], float], seconds: int, t0: float = 0.0) -> None:
        for k in range(seconds):
            t = t0 + k
            seen = min(load(t), self.serving(t) * self.max_concurrency)
            self.memory, d = decide(
                self.policy, self.memory, Reading(t, seen), self.current, ready=self.serving(t)
            )
            self.decisions.append(d)
            if d.desired != self.current:
                self.current = d.desired
                self.ready.append((t, d.desired))


def flips(decisions: list[Decision]) -> list[float]:
    """Times at which the direction of change reversed."""
    out, last = [], 0
    for d in decisions:
        step = (d.desired > d.current) - (d.desired < d.current)
        if step and last and step != last:
            out.append(d.at)
        last = step or last
    return out


# --- fake-time simulations -------------------------------------------------------------


def test_a_5x_step_is_served_within_start_time_plus_5_s() -> None:
    """Steady at 4 instances' worth of in-flight calls, then 5 times that: enough
    instances serve no later than instance start time + 5 s after the step."""
    sim = Sim(POLICY, current=4, start_s=10.0)
    base = 4 * POLICY.target_inflight
    sim.run(lambda _t: base, 120)
    assert sim.current == 4
    step_at = 120.0
    sim.run(lambda _t: 5 * base, 60, t0=step_at)
    needed = math.ceil(5 * base / POLICY.target_inflight)
    served_at = next(t for t in range(120, 180) if sim.serving(t) >= needed)
    assert served_at <= step_at + sim.start_s + 5, sim.decisions[118:130]
    assert any(d.mode == "panic" for d in sim.decisions[120:])


@settings(max_examples=25, deadline=None)
@given(
    level=st.floats(min_value=2, max_value=400),
    seed=st.integers(0, 2**32 - 1),
)
def test_20_percent_noise_flips_direction_at_most_once_per_10_minutes(
    level: float, seed: int
) -> None:
    """An hour of load at ``level`` in-flight calls, each reading off by up to +-20 %:
    no 10-minute span holds two reversals of direction."""
    rng = random.Random(seed)  # noqa: S311 - noise for a simulation, not a secret
    sim = Sim(POLICY, current=max(1, math.ceil(level / POLICY.target_inflight)))
    sim.run(lambda _t: level * rng.uniform(0.8, 1.2), 3600)
    reversals = flips(sim.decisions)
    for a, b in itertools.pairwise(reversals):
        assert b - a >= 600, (level, reversals)


RAY_LIKE = AutoscalingPolicy(
    max_instances=20,
    target_inflight=2,
    stable_window_s=30,
    panic_threshold=100,
    scale_down_delay_s=600,
    scale_down_tolerance=0,
    scale_up_delay_s=30,
)
"""Ray Serve's defaults as the scenarios' baseline writes them (no panic: a threshold no
load reaches)."""


def test_a_scale_up_delay_holds_a_step_exactly_that_long() -> None:
    """One instance's load, then 5 times it at t=120: the Ray-like policy scales out only
    at t=150, once every reading for 30 s asked for more, straight to 5; the same policy
    without the delay scales out at the step."""
    delayed = Sim(RAY_LIKE, current=1)
    delayed.run(lambda t: 2.0 if t < 120 else 10.0, 200)
    changes = [(d.at, d.desired) for d in delayed.decisions if d.changes]
    assert changes == [(150.0, 5)], changes
    assert "more asked for 30 s" in delayed.decisions[150].reason
    assert "waits: more asked for 29 of 30 s" in delayed.decisions[149].reason
    at_once = Sim(RAY_LIKE.model_copy(update={"scale_up_delay_s": 0.0}), current=1)
    at_once.run(lambda t: 2.0 if t < 120 else 10.0, 200)
    assert next(d.at for d in at_once.decisions if d.changes) == 120.0


def test_load_gone_scales_in_only_after_the_delay_and_at_most_halving() -> None:
    """10 instances' worth of calls until t=120, then half of one instance's: the count
    stays 10 for scale_down_delay_s after the last reading that asked for 10, then
    falls, at most halving per decision, to 1."""
    sim = Sim(POLICY, current=1)
    sim.run(lambda _t: 80.0, 120)
    assert sim.current == 10
    sim.run(lambda _t: 4.0, 900, t0=120)
    first_in = next(d for d in sim.decisions if d.desired < d.current)
    assert first_in.at >= 119 + POLICY.scale_down_delay_s
    assert all(d.desired >= math.ceil(d.current / 2) for d in sim.decisions)
    assert sim.current == 1


def test_hysteresis_keeps_a_load_just_at_the_target() -> None:
    """Exactly one instance's target, after 2 instances served more: scaling in aims at
    90 % of the target, so 2 stay rather than 1 that would be at 100 %."""
    sim = Sim(POLICY, current=1)
    sim.run(lambda _t: 16.0, 120)
    sim.run(lambda _t: 8.0, 900, t0=120)
    assert sim.current == 2


def test_p99_over_target_scales_out_and_waits_to_see_the_effect() -> None:
    """In-flight figures ask for nothing more, but the p99 is 4x its target: the count
    rises (by at most panic_threshold x) and not again within start time + panic window."""
    policy = AutoscalingPolicy(max_instances=20, target_inflight=8, target_p99_ms=100)
    slow = ((0.1, 0.0), (0.25, 0.0), (0.5, 100.0), (math.inf, 100.0))
    memory, current, ups = ScalerMemory(), 4, []
    for t in range(30):
        memory, d = decide(policy, memory, Reading(t, 16.0, 50.0, slow), current)
        if d.changes:
            ups.append((t, d.mode, d.desired))
            current = d.desired
    assert ups[0] == (0, "latency", 8)
    wait = policy.instance_start_s + policy.panic_window_s
    assert all(b[0] - a[0] >= wait for a, b in itertools.pairwise(ups))


# --- properties ---------------------------------------------------------------------------

policies = st.builds(
    lambda lo, span, target, p99, up_delay: AutoscalingPolicy(
        min_instances=lo,
        max_instances=lo + span,
        target_inflight=target,
        target_p99_ms=p99,
        scale_down_delay_s=30,
        scale_up_delay_s=up_delay,
    ),
    st.integers(1, 5),
    st.integers(0, 30),
    st.floats(1, 50),
    st.none() | st.floats(10, 1000),
    st.sampled_from([0.0, 0.0, 5.0, 30.0]),
)
loads = st.lists(st.tuples(st.floats(0, 2000), st.integers(1, 80)), min_size=1, max_size=8).map(
    lambda steps: [x for x, n in steps for _ in range(n)]
)
"""In-flight readings as a few steps of constant load (bursts and drops), 1-640 long."""
BUCKETS = ((0.05, 90.0), (0.5, 99.0), (math.inf, 100.0))


def _replay(
    policy: AutoscalingPolicy, inflight: list[float], current: int, step: float = 1.0
) -> tuple[ScalerMemory, int, list[Decision]]:
    memory, out = ScalerMemory(), []
    for k, x in enumerate(inflight):
        memory, d = decide(policy, memory, Reading(k * step, x, None, BUCKETS), current)
        out.append(d)
        current = d.desired
    return memory, current, out


@settings(max_examples=200, deadline=None)
@given(
    policy=policies,
    inflight=loads,
    start=st.integers(0, 60),
    forecast=st.none() | st.integers(0, 500),
)
def test_never_outside_min_and_max(
    policy: AutoscalingPolicy, inflight: list[float], start: int, forecast: int | None
) -> None:
    """Whatever the load, the forecast or the count it starts from (even outside the
    bounds, after an update changed them), every decision is within min..max."""
    memory, current = ScalerMemory(), start
    for k, x in enumerate(inflight):
        memory, d = decide(policy, memory, Reading(float(k), x), current, forecast=forecast)
        assert policy.min_instances <= d.desired <= policy.max_instances
        current = d.desired


@settings(max_examples=200, deadline=None)
@given(
    policy=policies,
    history=loads,
    current=st.integers(1, 40),
    a=st.floats(0, 2000),
    b=st.floats(0, 2000),
    fa=st.none() | st.integers(0, 60),
    fb=st.none() | st.integers(0, 60),
)
def test_monotone_in_load(  # noqa: PLR0917 - one argument per drawn value
    policy: AutoscalingPolicy,
    history: list[float],
    current: int,
    a: float,
    b: float,
    fa: int | None,
    fb: int | None,
) -> None:
    """From the same memory and count, more in-flight calls (and a larger forecast) never
    yield fewer instances."""
    memory, _, _ = _replay(policy, history, current)
    (lo, hi) = sorted((a, b))
    (flo, fhi) = sorted((fa or 0, fb or 0))
    at = float(len(history))
    _, d_lo = decide(policy, memory, Reading(at, lo, None, BUCKETS), current, forecast=flo)
    _, d_hi = decide(policy, memory, Reading(at, hi, None, BUCKETS), current, forecast=fhi)
    assert d_lo.desired <= d_hi.desired


@settings(max_examples=200, deadline=None)
@given(
    policy=policies, inflight=loads, start=st.integers(1, 30), step=st.sampled_from([0.5, 1.0, 3.0])
)
def test_scale_in_only_after_the_windows(
    policy: AutoscalingPolicy, inflight: list[float], start: int, step: float
) -> None:
    """No scale-in before a whole stable window was read; and after a scale-out to n,
    nothing below n within ``scale_down_delay_s`` (but the bounds' own clamp)."""
    start = min(max(start, policy.min_instances), policy.max_instances)
    _, _, decisions = _replay(policy, inflight, start, step)
    first = decisions[0].at
    ups: list[Decision] = []
    for d in decisions:
        if d.desired < d.current:
            assert d.at - first >= policy.stable_window_s
            for up in ups:
                if d.at - up.at < policy.scale_down_delay_s:
                    assert d.desired >= up.desired
        elif d.desired > d.current:
            ups.append(d)


@settings(max_examples=200, deadline=None)
@given(
    policy=policies,
    inflight=loads,
    start=st.integers(1, 30),
    delay=st.sampled_from([5.0, 30.0]),
    step=st.sampled_from([1.0, 10.0]),
)
def test_a_scale_out_comes_a_whole_delay_after_the_last_change(
    policy: AutoscalingPolicy, inflight: list[float], start: int, delay: float, step: float
) -> None:
    """With ``scale_up_delay_s``, no scale-out comes sooner than that after the first
    reading or the previous change of the count, whatever the load (readings every
    second, or every 10 s as Ray Serve's metrics)."""
    policy = policy.model_copy(update={"scale_up_delay_s": delay})
    start = min(max(start, policy.min_instances), policy.max_instances)
    _, _, decisions = _replay(policy, inflight, start, step)
    last_change = decisions[0].at
    for d in decisions:
        if d.desired > d.current:
            assert d.at - last_change >= delay, (d, last_change)
        if d.changes:
            last_change = d.at
