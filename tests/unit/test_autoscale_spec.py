"""The spec's ``autoscaling:`` section: defaults, and a one-line error naming the field
for each inconsistent setting."""

from __future__ import annotations

from typing import Any

import pytest

from ha_serving._errors import InvalidSpec
from ha_serving._spec import AutoscalingPolicy, parse_spec


def _spec(autoscaling: Any, **top: Any) -> dict[str, Any]:
    return {
        "name": "echo",
        "version": "v1",
        "code": {"dir": "code", "import_path": "echo:Echo"},
        "instances": 2,
        "autoscaling": autoscaling,
        **top,
    }


def test_no_section_means_a_fixed_count() -> None:
    assert parse_spec(_spec(None)).autoscaling is None


def test_defaults_are_knatives_kpa() -> None:
    """An empty section gets KPA's windows and panic threshold, and no forecast."""
    a = parse_spec(_spec({})).autoscaling
    assert a == AutoscalingPolicy()
    assert (a.stable_window_s, a.panic_window_s, a.panic_threshold) == (60.0, 6.0, 2.0)
    assert a.predictive is None
    # the fields a Ray-Serve-like baseline needs change nothing unless set
    assert (a.scale_up_delay_s, a.reading_period_s) == (0.0, None)


def test_a_predictive_subsection_gets_its_defaults() -> None:
    a = parse_spec(_spec({"predictive": {}})).autoscaling
    assert a is not None
    assert a.predictive is not None
    assert (a.predictive.step_s, a.predictive.season_s) == (60.0, 86_400.0)


@pytest.mark.parametrize(
    ("section", "top", "problem"),
    [
        ({"min_instances": 5, "max_instances": 3}, {}, "min_instances 5 > max_instances 3"),
        ({"max_instances": 1}, {}, "instances 2 outside autoscaling's 1..1"),
        ({"min_instances": 3}, {}, "instances 2 outside autoscaling's 3..10"),
        ({"target_inflight": 40}, {}, "target_inflight 40 > max_concurrency 32"),
        ({"panic_window_s": 60}, {}, "panic_window_s 60 must be shorter than stable_window_s"),
        ({"predictive": {"season_s": 90}}, {}, "season_s 90 must be 2 or more whole steps"),
        ({"min_instances": 0}, {}, "autoscaling.min_instances: Input should be greater"),
        ({"panic_threshold": 1}, {}, "autoscaling.panic_threshold: Input should be greater"),
        ({"target_inflight": float("nan")}, {}, "autoscaling.target_inflight: Input should"),
        ({"window": 5}, {}, "autoscaling.window: Extra inputs are not permitted"),
        ({"reading_period_s": 0}, {}, "autoscaling.reading_period_s: Input should be greater"),
        ({"scale_up_delay_s": -1}, {}, "autoscaling.scale_up_delay_s: Input should be greater"),
        ("fast", {}, "autoscaling: Input should be a valid dictionary"),
    ],
    ids=[
        "min above max",
        "instances above max",
        "instances below min",
        "target above the proxies' cap",
        "panic window not shorter",
        "season not whole steps",
        "scale to zero",
        "panic threshold of 100 %",
        "NaN target",
        "unknown key",
        "no reading period",
        "negative scale-up delay",
        "not a mapping",
    ],
)
def test_an_inconsistent_section_is_refused_in_one_line(
    section: Any, top: dict[str, Any], problem: str
) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_spec(_spec(section, **top))
    message = str(caught.value)
    assert "\n" not in message
    assert problem in message, message
