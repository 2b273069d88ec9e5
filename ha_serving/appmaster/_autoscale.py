"""Decide purely how many instances a service needs: ``decide(policy, memory, reading,
current, now) -> (memory, Decision)``.

Theory of operation
-------------------
A reactive policy after Knative's KPA, fed by the proxies' own figures (in-flight
calls per instance, answered calls, latency histogram), read by the AppMaster about
once a second (``Reading``). ``ScalerMemory`` is what it remembers between readings;
it is kept in the AppMaster's memory only: a restarted AppMaster starts with an empty
one, which can scale out at once but scales in only after a full window again.

- **Stable mode.** The in-flight figure averaged over ``stable_window_s`` (60 s)
  divided by ``target_inflight`` is the count wanted.
- **Panic mode.** When the average over ``panic_window_s`` (6 s) asks for
  ``panic_threshold`` (2x) the instances serving or more, the service panics for a stable
  window: the count follows the *highest* in-flight reading of the panic window, and
  never goes down. Using the peak, not the mean, is this module's change to KPA: the
  mean of a 6 s window reaches a step's height only 6 s after it, the peak at once.
- **Latency.** With ``target_p99_ms``, a p99 above it (over the panic window) asks for
  the current count times the overshoot (at most ``panic_threshold`` times), no more
  often than once per ``instance_start_s + panic_window_s``, so each step is seen
  before the next.
- **Forecast.** ``forecast`` (see ``_forecast.py``) may only raise the count: the
  result is the larger of it and the reactive count, so reactive is its floor, and a
  forecast alone never scales in.
- **Scaling in, slowly.** It aims at ``target_inflight * (1 - scale_down_tolerance)``
  per instance (hysteresis); it takes the highest count asked for over the last
  ``scale_down_delay_s``; it waits until a whole stable window has been read; and it
  at most halves the count at once (KPA's max scale-down rate, 2).
- **Scaling out late, on purpose.** With ``scale_up_delay_s`` (0 by default), a
  scale-out is carried out only once every decision for that long asked for more, as
  Ray Serve's ``upscale_delay_s`` does; it exists to configure a baseline like Ray
  Serve's to compare with.
- Every result is clamped to ``min_instances..max_instances``.

Modes (``Decision.mode``): ``stable``, ``panic``, ``latency``, ``forecast`` (the
forecast raised the count), ``bounds`` (the policy asked for no change, but the count
was outside ``min_instances..max_instances``, after an update moved them), ``keeper`` (the Keeper's
floor raised the count: demand another cluster cannot serve, ``keeper/_capacity.py``),
``hold``.

The module does no I/O and reads no clock; ``now`` is the caller's monotonic seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from ha_serving._spec import AutoscalingPolicy
from ha_serving.util.histogram import quantile_bound

MAX_SCALE_DOWN_RATE = 2.0
"""A scale-in at most divides the count by this (KPA's ``max-scale-down-rate``)."""

Mode = Literal["stable", "panic", "latency", "forecast", "bounds", "keeper", "hold"]


@dataclass(frozen=True)
class Reading:
    """The proxies' figures for one service at one moment, summed over its proxies."""

    at: float
    """Monotonic seconds."""
    inflight: float
    """Calls in flight on all the service's instances."""
    rate: float | None = None
    """Calls answered per second since the previous reading (None: the first one)."""
    buckets: tuple[tuple[float, float], ...] = ()
    """Latency histogram of the calls answered since the previous reading: cumulative
    count per upper bound in seconds (``+Inf`` included)."""


@dataclass(frozen=True)
class ScalerMemory:
    readings: tuple[Reading, ...] = ()
    """Readings of the last stable window, oldest first."""
    asked: tuple[tuple[float, int], ...] = ()
    """(when, count) of the counts asked for over the last ``scale_down_delay_s``."""
    since: float | None = None
    """When the first reading was taken: no scale-in before a whole window was seen."""
    panic_until: float = -math.inf
    latency_step_at: float = -math.inf
    """When the latency rule last raised the count."""
    up_since: float | None = None
    """When the decisions began to ask for more than the current count, every one
    since (None: the last one did not): ``scale_up_delay_s`` is counted from it."""


@dataclass(frozen=True)
class Decision:
    at: float
    current: int
    desired: int
    mode: Mode
    reason: str
    """One line: the figures and the rule that decided."""
    own: int | None = None
    """The count this cluster's own figures ask for (the stable window's in-flight over
    the target, or the forecast, within the bounds), apart from the count it holds
    (hysteresis, panic, a floor): what the Keeper reads as this cluster's demand. None:
    ``desired``."""

    @property
    def demand(self) -> int:
        return self.desired if self.own is None else self.own

    @property
    def changes(self) -> bool:
        return self.desired != self.current


def decide(
    policy: AutoscalingPolicy,
    memory: ScalerMemory,
    reading: Reading,
    current: int,
    *,
    ready: int | None = None,
    forecast: int | None = None,
    floor: int | None = None,
    floor_why: str = "",
) -> tuple[ScalerMemory, Decision]:
    """The count of instances wanted after ``reading``, given ``current`` (the count
    decided last) and ``ready`` (instances serving; default ``current``), and what to
    remember for the next reading. ``floor`` (the Keeper's, ``floor_why`` its reason) is
    applied last and only raises: it is not remembered as asked for, so when it is
    lifted the count goes back to what the figures ask (at most halving per decision)."""
    now = reading.at
    readings = _within((*memory.readings, reading), now - policy.stable_window_s)
    memory = replace(memory, readings=readings, since=now if memory.since is None else memory.since)
    memory, want, mode, why = _reactive(
        policy, memory, current, current if ready is None else ready
    )
    memory, want, mode, why = _latency(policy, memory, current, (want, mode, why))
    if forecast is not None and forecast > want:
        mode, want = "forecast", forecast
        why = f"forecast asks {forecast} (reactive: {why})"
    memory = replace(
        memory, asked=(*_recent(memory.asked, now - policy.scale_down_delay_s), (now, want))
    )
    desired, why = _scale_in(policy, memory, current, want, why)
    memory, desired, why = _delay_scale_out(policy, memory, current, desired, why)
    clamped = policy.clamp(desired)
    if clamped != desired:
        mode = "bounds" if desired == current else mode  # moved by the bounds alone
        why = f"{why}; within {policy.min_instances}..{policy.max_instances}"
    # this cluster's own demand, from its figures alone: not ``clamped``, which a count
    # raised by a floor holds up (no scale-in before a full window, panic's no going down)
    stable_avg = sum(r.inflight for r in readings) / len(readings)
    own = policy.clamp(max(_count(stable_avg / policy.target_inflight), forecast or 0))
    if floor is not None and policy.clamp(floor) > clamped:
        clamped, mode = policy.clamp(floor), "keeper"
        why = f"the Keeper's floor {floor} ({floor_why}; own: {why})"
    if clamped == current and mode != "panic":
        mode = "hold"
    reason = f"{current} -> {clamped}: {why}; target {policy.target_inflight:g} per instance"
    return memory, Decision(now, current, clamped, mode, reason, own=own)


def _reactive(
    policy: AutoscalingPolicy, memory: ScalerMemory, current: int, ready: int
) -> tuple[ScalerMemory, int, Mode, str]:
    """Stable and panic modes: the count the in-flight figures ask for. Panic is judged
    against the instances serving, as KPA's is against ready pods: a count raised by
    stable mode whose instances are still starting does not make a burst look smaller."""
    now = memory.readings[-1].at
    target = policy.target_inflight
    stable_avg = sum(r.inflight for r in memory.readings) / len(memory.readings)
    recent = _within(memory.readings, now - policy.panic_window_s)
    panic_avg = sum(r.inflight for r in recent) / len(recent)
    peak = max(r.inflight for r in recent)

    want = _count(stable_avg / target)
    mode: Mode = "stable"
    why = f"in-flight {stable_avg:.1f} over {policy.stable_window_s:g} s"
    if want < current:  # scaling in aims lower: hysteresis against flip-flopping
        want = min(current, _count(stable_avg / (target * (1 - policy.scale_down_tolerance))))

    panic_until = memory.panic_until
    if panic_avg / target >= policy.panic_threshold * max(ready, 1):
        panic_until = now + policy.stable_window_s
    if now < panic_until:
        panicked = max(want, current, _count(peak / target))
        if panicked > want or want < current:
            mode, want = "panic", panicked
            why = f"panic: in-flight peak {peak:.1f}, mean {panic_avg:.1f}"
            why += f" over {policy.panic_window_s:g} s"
    return replace(memory, panic_until=panic_until), want, mode, why


def _latency(
    policy: AutoscalingPolicy,
    memory: ScalerMemory,
    current: int,
    so_far: tuple[int, Mode, str],
) -> tuple[ScalerMemory, int, Mode, str]:
    """A p99 above its target raises the count, once per start time + panic window."""
    want, mode, why = so_far
    now = memory.readings[-1].at
    p99 = _p99_ms(_within(memory.readings, now - policy.panic_window_s))
    goal = policy.target_p99_ms
    if goal is None or p99 is None or p99 <= goal:
        return memory, want, mode, why
    if now - memory.latency_step_at < policy.instance_start_s + policy.panic_window_s:
        return memory, want, mode, why
    stepped = max(current + 1, _count(current * min(p99 / goal, policy.panic_threshold)))
    if stepped <= want:
        return memory, want, mode, why
    return (
        replace(memory, latency_step_at=now),
        stepped,
        "latency",
        f"p99 {p99:.0f} ms > target {goal:g} ms",
    )


def _scale_in(
    policy: AutoscalingPolicy, memory: ScalerMemory, current: int, want: int, why: str
) -> tuple[int, str]:
    """A count below ``current`` only after a whole window was read, no lower than
    anything asked within ``scale_down_delay_s``, and at most halving."""
    if want >= current:
        return want, why
    now = memory.readings[-1].at
    if memory.since is None or now - memory.since < policy.stable_window_s:
        return current, f"{why}; scale-in waits for a full window"
    held = max(n for _, n in memory.asked)
    floor = math.ceil(current / MAX_SCALE_DOWN_RATE)
    if held > want:
        return min(current, max(held, floor)), (
            f"{why}; asked {held} within {policy.scale_down_delay_s:g} s"
        )
    return max(want, floor), why


def _delay_scale_out(
    policy: AutoscalingPolicy, memory: ScalerMemory, current: int, desired: int, why: str
) -> tuple[ScalerMemory, int, str]:
    """A count above ``current`` only once every decision for ``scale_up_delay_s`` asked
    for more (Ray Serve's upscale delay); the wait starts again after each change."""
    delay = policy.scale_up_delay_s
    if desired <= current or delay <= 0:
        return replace(memory, up_since=None), desired, why
    now = memory.readings[-1].at
    since = now if memory.up_since is None else memory.up_since
    if now - since < delay:
        return (
            replace(memory, up_since=since),
            current,
            f"{why}; scale-out to {desired} waits: more asked for {now - since:g} of {delay:g} s",
        )
    return replace(memory, up_since=None), desired, f"{why}; more asked for {now - since:g} s"


def _count(instances: float) -> int:
    """Whole instances for a fractional need (a rounding error is not one more)."""
    return max(0, math.ceil(instances - 1e-9))


def _within(readings: tuple[Reading, ...], after: float) -> tuple[Reading, ...]:
    return tuple(r for r in readings if r.at > after)


def _recent(asked: tuple[tuple[float, int], ...], after: float) -> tuple[tuple[float, int], ...]:
    return tuple(a for a in asked if a[0] > after)


def _p99_ms(readings: tuple[Reading, ...]) -> float | None:
    total: dict[float, float] = {}
    for r in readings:
        for le, n in r.buckets:
            total[le] = total.get(le, 0.0) + n
    bound = quantile_bound(total, 0.99)
    return None if bound is None else bound * 1000.0
