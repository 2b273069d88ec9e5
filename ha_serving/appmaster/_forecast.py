"""The predictive half of the autoscaler: a Holt-Winters forecast of a service's request
rate from its own history (the store's ``rate_samples``), turned into a count of
instances to have serving when the forecast load arrives.

``forecast_rate`` fits statsmodels' ``ExponentialSmoothing`` (additive damped trend,
additive season of ``season_s / step_s`` steps) to the recorded history, gaps filled by
linear interpolation, and returns the highest rate it forecasts between now and
``ahead_s`` from now; None while the history is shorter than ``min_seasons`` seasons or
the fit fails. ``forecast_instances`` converts that rate into instances with the
service's own ratio of in-flight calls to rate (Little's law: in-flight = rate x
latency), read from the same proxy figures as the reactive policy.

The result only ever raises the reactive count (``_autoscale.decide`` takes the larger
of the two): a forecast never scales in. Fitting costs tens of milliseconds to a few
seconds for a day of minute steps; the AppMaster runs it off its event loop, once a
step.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence

import numpy as np

from ha_serving._spec import PredictivePolicy

log = logging.getLogger("ha_serving.appmaster.forecast")

MAX_SEASONS_FITTED = 4
"""At most this many seasons of the latest history are fitted: older load says little
about the next minutes, and the fit's cost grows with the series."""


def history_needed_s(policy: PredictivePolicy) -> float:
    """How far back the history is read."""
    return policy.season_s * MAX_SEASONS_FITTED


def forecast_rate(
    history: Sequence[tuple[float, float]], policy: PredictivePolicy, now: float, ahead_s: float
) -> float | None:
    """Highest forecast rate (calls/s) over the steps from ``now`` to ``now + ahead_s``,
    from ``history`` of (step start, rate), oldest first; None without enough history."""
    step = policy.step_s
    period = round(policy.season_s / step)
    if not history:
        return None
    start = history[0][0]
    span = history[-1][0] - start
    if span + step < policy.min_seasons * policy.season_s:
        return None
    grid = np.arange(start, history[-1][0] + step / 2, step)
    at = np.array([h[0] for h in history])
    rates = np.array([h[1] for h in history])
    series = np.interp(grid, at, rates)[-period * MAX_SEASONS_FITTED :]
    steps_ahead = max(1, math.ceil((now + ahead_s - grid[-1]) / step))
    predicted = _holt_winters(series, period, steps_ahead)
    if predicted is None:
        return None
    current = math.floor((now - grid[-1]) / step)  # steps since the last recorded one
    upcoming = predicted[max(0, current - 1) :]
    return max(0.0, float(np.max(upcoming)))


def _holt_winters(series: np.ndarray, period: int, steps: int) -> np.ndarray | None:
    from statsmodels.tools.sm_exceptions import ConvergenceWarning
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    try:
        # a flat series makes its information criteria log(0): harmless to the forecast
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = ExponentialSmoothing(
                series,
                trend="add",
                damped_trend=True,
                seasonal="add",
                seasonal_periods=period,
                initialization_method="heuristic",
            )
            forecast = model.fit().forecast(steps)
    except (ValueError, np.linalg.LinAlgError) as exc:  # a degenerate series
        log.warning("rate forecast failed, reactive only: %s", exc)
        return None
    values = np.asarray(forecast, dtype=float)
    return values if np.all(np.isfinite(values)) else None


def forecast_instances(
    rate: float | None, inflight_per_rate: float | None, target: float
) -> int | None:
    """Instances for a forecast ``rate`` at ``target`` in-flight calls per instance, given
    the service's observed in-flight calls per unit of rate (its mean latency in s)."""
    if rate is None or inflight_per_rate is None or inflight_per_rate <= 0:
        return None
    return max(0, math.ceil(rate * inflight_per_rate / target - 1e-9))
