"""SLA arithmetic: availability, raw percentiles, timeline and the longest bad streak."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from loadtest.sla import Record, longest_bad_streak, percentile, summarize, timeline


def test_summary_of_a_known_run() -> None:
    """999 OK and 1 UNAVAILABLE: 99.9 % available, the SLO of 0.999 is met exactly."""
    records = [Record(1000.0 + i / 100, float(i % 100), "OK", "a") for i in range(999)]
    records.append(Record(1005.0, 500.0, "UNAVAILABLE"))
    s = summarize(records, slo=0.999)
    assert (s["requests"], s["failures"]) == (1000, 1)
    assert s["availability"] == 0.999
    assert s["passed"]
    assert s["failures_by_outcome"] == {"UNAVAILABLE": 1}
    assert s["per_cluster"] == {"a": 999}
    assert s["p50_ms"] == 49.0
    assert s["max_ms"] == 500.0
    assert s["longest_bad_streak_s"] == 1.0


def test_slo_missed_and_empty_runs_fail() -> None:
    assert not summarize([Record(0, 1, "OK"), Record(0, 1, "DEADLINE_EXCEEDED")], slo=0.999)[
        "passed"
    ]
    assert not summarize([], slo=0.999)["passed"]


def test_timeline_buckets_by_second_and_streaks_count_consecutive_bad_seconds() -> None:
    records = [
        Record(10.0, 5, "OK"),
        Record(11.2, 5, "UNKNOWN"),
        Record(12.5, 5, "UNAVAILABLE"),
        Record(14.0, 5, "OK"),
    ]
    seconds = timeline(records)
    assert [s["requests"] for s in seconds] == [1, 1, 1, 0, 1]
    assert [s["failures"] for s in seconds] == [0, 1, 1, 0, 0]
    assert longest_bad_streak(seconds) == 2.0


@given(st.lists(st.floats(0, 10_000, allow_nan=False), min_size=1, max_size=500), st.floats(0, 100))
def test_percentile_is_an_element_and_monotonic(values: list[float], q: float) -> None:
    ordered = sorted(values)
    p = percentile(ordered, q)
    assert p in ordered
    assert percentile(ordered, min(100.0, q + 1)) >= p
