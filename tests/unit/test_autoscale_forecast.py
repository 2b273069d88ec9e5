"""The predictive policy: a Holt-Winters forecast of the request rate scales out ahead
of a recurring rise; reactive is its floor; a forecast alone never scales in."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ha_serving._spec import AutoscalingPolicy, PredictivePolicy
from ha_serving.appmaster._autoscale import Reading, ScalerMemory, decide
from ha_serving.appmaster._forecast import forecast_instances, forecast_rate

HOURLY = PredictivePolicy(step_s=60, season_s=3600, min_seasons=2)
"""A one-hour season keeps the fits small; the model is the same as for a day."""


def busy_half_hour(minute: int) -> float:
    """10 calls/s, but 100 from minute 30 to 44 of each hour."""
    return 100.0 if 30 <= minute % 60 < 45 else 10.0


def history(
    hours: int,
    rate: Callable[[int], float] = busy_half_hour,
    noise: float = 0.05,
    seed: int = 0,
) -> list[tuple[float, float]]:
    """(step start, rate) for ``hours`` of minute steps, each off by up to ``noise``."""
    rng = np.random.default_rng(seed)
    return [(60.0 * k, rate(k) * (1 + rng.uniform(-noise, noise))) for k in range(60 * hours)]


def test_too_little_history_gives_no_forecast() -> None:
    """Holt-Winters needs min_seasons whole seasons; with less, reactive only."""
    assert forecast_rate([], HOURLY, 0.0, 60) is None
    assert forecast_rate(history(1), HOURLY, 3600.0, 60) is None
    assert forecast_rate(history(2), HOURLY, 7200.0, 60) is not None


def test_the_recurring_rise_is_forecast_before_it_comes() -> None:
    """Three hours of history; at minute 29 of the fourth, looking 90 s ahead, the
    forecast sees the rise to 100 calls/s that has not started; at minute 10 it sees
    the quiet 10."""
    past = history(3)
    before_rise = 3 * 3600 + 29 * 60
    rising = forecast_rate(past + history(4)[180 : 180 + 29], HOURLY, before_rise, 90)
    assert rising is not None
    assert rising > 70, rising
    quiet = forecast_rate(past + history(4)[180:190], HOURLY, 3 * 3600 + 10 * 60, 90)
    assert quiet is not None
    assert quiet < 25, quiet


def test_gaps_in_the_history_are_bridged() -> None:
    """An AppMaster down for 20 minutes left a gap; the forecast still comes."""
    past = [h for h in history(3) if not 3000 <= h[0] < 4200]
    found = forecast_rate(past, HOURLY, 3 * 3600, 60)
    assert found is not None
    assert math.isfinite(found)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(0, 1e6), min_size=120, max_size=200), st.integers(0, 1000))
def test_any_history_gives_a_finite_rate_or_none(rates: list[float], ahead: int) -> None:
    """Garbage in (spikes, zeros, constants) never yields a negative, NaN or infinite
    rate, nor an exception: the forecast is skipped instead."""
    hist = [(60.0 * k, r) for k, r in enumerate(rates)]
    found = forecast_rate(hist, HOURLY, 60.0 * len(rates), ahead)
    assert found is None or (math.isfinite(found) and found >= 0)


def test_forecast_rate_becomes_instances_by_littles_law() -> None:
    """100 calls/s at 0.16 s each is 16 in flight: 2 instances at 8 per instance."""
    assert forecast_instances(100.0, 0.16, 8.0) == 2
    assert forecast_instances(None, 0.16, 8.0) is None
    assert forecast_instances(100.0, None, 8.0) is None
    assert forecast_instances(100.0, 0.0, 8.0) is None


POLICY = AutoscalingPolicy(max_instances=50, target_inflight=8, predictive=HOURLY)


def test_the_forecast_scales_out_while_the_load_is_still_low() -> None:
    """At target load on 2 instances, a forecast of 12 scales out to 12 at once."""
    memory = ScalerMemory()
    for t in range(60):
        memory, d = decide(POLICY, memory, Reading(float(t), 16.0), 2)
        assert d.desired == 2
    _, d = decide(POLICY, memory, Reading(60.0, 16.0), 2, forecast=12)
    assert (d.desired, d.mode) == (12, "forecast")


def test_a_low_forecast_does_not_scale_in() -> None:
    """10 instances busy at their target: a forecast of 1 leaves them at 10."""
    memory = ScalerMemory()
    for t in range(400):
        memory, d = decide(POLICY, memory, Reading(float(t), 80.0), 10, forecast=1)
        assert d.desired == 10


@settings(max_examples=300, deadline=None)
@given(
    inflight=st.lists(
        st.tuples(st.floats(0, 800), st.integers(1, 120)), min_size=1, max_size=6
    ).map(lambda steps: [x for x, n in steps for _ in range(n)]),
    forecasts=st.lists(st.none() | st.integers(0, 80), min_size=1, max_size=20),
    current=st.integers(1, 50),
)
def test_reactive_is_the_floor_and_a_forecast_alone_never_scales_in(
    inflight: list[float], forecasts: list[int | None], current: int
) -> None:
    """Replaying one load twice, with and without forecasts, from the same memory at
    each step: with a forecast the count is never below the reactive one, and it goes
    below the current count only when the reactive policy alone would too."""
    memory = ScalerMemory()
    for k, x in enumerate(inflight):
        reading = Reading(float(k), x)
        forecast = forecasts[k % len(forecasts)]
        _, reactive = decide(POLICY, memory, reading, current)
        memory, both = decide(POLICY, memory, reading, current, forecast=forecast)
        assert both.desired >= reactive.desired
        if both.desired < current:
            assert reactive.desired < current
        current = both.desired
