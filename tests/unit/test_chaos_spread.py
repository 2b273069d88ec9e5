"""The cross-cluster autoscaler drill (``chaos.spread``): its checker catches each
planted failure (a survivor that never carries the load, or too late; shares that never
met the need; a call run twice), and the drill kills cluster b between settled shares
and the survivor's check, then restarts b and waits for the floor to be lifted."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from chaos import spread
from chaos.catalogue import DRILLS_DIR, load_drill
from chaos.spread import Outcome, check

GOOD = Outcome(need=6, before={"a": 3, "b": 3}, at_fault=3, serving=6, carried_s=6.5, max_s=30.0)


def test_a_survivor_that_carries_the_load_in_time_passes() -> None:
    assert check(GOOD) == []
    assert check(dataclasses.replace(GOOD, floor_s=3.0, floor=4)) == []


@pytest.mark.parametrize(
    ("planted", "expected"),
    [
        (
            {"carried_s": None, "serving": 3},
            "served 3 of the 6 instances the load needs: carried never",
        ),
        ({"carried_s": 41.0}, "carried after 41.0 s (bound 30 s)"),
        ({"before": {"a": 3, "b": 2}}, "short of 6"),
        ({"at_fault": 6}, "the survivor served 6 before the fault, already the whole need"),
        ({"ran_twice": ("c-7",)}, "1 calls ran twice, e.g. c-7"),
    ],
)
def test_each_planted_failure_is_caught(planted: dict[str, Any], expected: str) -> None:
    problems = check(dataclasses.replace(GOOD, **planted))
    assert len(problems) == 1
    assert expected in problems[0]


def test_the_policy_needs_three_instances_per_cluster_and_room_for_all_on_one() -> None:
    """...and neither the load's start (3x on one instance) nor the survivor's doubling
    (2x on three) panics, so the survivor stands at its share when the peer dies."""
    assert spread.need() == 6
    assert spread.POLICY["max_instances"] >= spread.need()
    assert spread.POLICY["scale_down_delay_s"] > 90  # one direction while the drill runs
    share = spread.CALLERS / 2 / spread.POLICY["target_inflight"]  # 3x one instance
    assert spread.POLICY["panic_threshold"] > share


def test_the_drill_kills_b_after_settled_shares_and_checks_the_survivor() -> None:
    drill = load_drill(DRILLS_DIR / "autoscale-lose-cluster.json")
    steps = [a["name"] for a in drill.experiment["method"]]
    funcs = [a["provider"]["func"] for a in drill.experiment["method"]]
    assert funcs == [
        "start_spread_load",
        "spread_steady",
        "kill_cluster",
        "spread_carried",
        "restart_cluster",
        "wait_serving_from",
        "spread_floor_lifted",
        "stop_spread_load",
    ]
    assert (drill.thresholds.recovery_from, drill.thresholds.recovery_until) == (
        steps[2],
        steps[3],
    )
    assert drill.thresholds.max_recovery_s == 30
    assert not drill.meta.random
