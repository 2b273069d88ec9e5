"""Random mode: the seeded plan is reproducible and fits at least 20 faults in 600 s with
the catalogue's durations; its verdict is the whole run's availability and history
checks; its summary lists every fault with its time."""

from __future__ import annotations

import io
import itertools
import json
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from chaos.catalogue import DRILLS_DIR, load_catalogue, load_drill
from chaos.checker import LOST, Violation, data_plane
from chaos.history import CallRecord
from chaos.report import RandomRun, judge, random_reasons, random_summary_md
from chaos.run import FaultRun, RandomOptions, _parser, _run_plan, own_checks
from chaos.schedule import TopUp, eligible, plan
from tests.unit.test_chaos_report import T0, journal

GAP_S = 2.0


def test_the_same_seed_gives_the_same_plan_and_another_seed_another() -> None:
    catalogue = load_catalogue()
    first = plan(catalogue, seed=7, duration_s=600)
    assert first == plan(catalogue, seed=7, duration_s=600)
    assert [s.drill for s in first] != [s.drill for s in plan(catalogue, seed=8, duration_s=600)]
    assert first == plan(list(reversed(catalogue)), seed=7, duration_s=600)  # order-free


@pytest.mark.parametrize("seed", range(40))
def test_at_least_20_faults_fit_in_600_s_with_the_catalogues_durations(seed: int) -> None:
    catalogue = load_catalogue()
    slots = plan(catalogue, seed=seed, duration_s=600, min_faults=20, gap_s=GAP_S)
    assert len(slots) >= 20
    durations = {d.name: d.meta.duration_s for d in catalogue}
    assert sum(durations[s.drill] + GAP_S for s in slots) <= 600
    assert [s.index for s in slots] == list(range(1, len(slots) + 1))
    assert all(a.at_s < b.at_s for a, b in itertools.pairwise(slots))
    assert all(a.drill != b.drill for a, b in itertools.pairwise(slots))
    assert {s.drill for s in slots} <= {d.name for d in eligible(catalogue)}


def test_top_ups_fit_the_time_left_never_repeat_the_last_and_follow_the_seed() -> None:
    catalogue = load_catalogue()
    costs = {d.name: d.meta.duration_s + GAP_S for d in eligible(catalogue)}
    top_up = TopUp(catalogue, seed=7, gap_s=GAP_S)
    last, drawn = None, []
    for room in (600.0, 300.0, 120.0, 60.0, 40.0) * 4:
        drill = top_up.next(last=last, room_s=room)
        assert drill is not None
        assert costs[drill.name] <= room
        assert drill.name != last
        assert not drill.meta.control
        last = drill.name
        drawn.append(drill.name)
    assert top_up.next(last=None, room_s=min(costs.values()) - 0.1) is None
    again = TopUp(catalogue, seed=7, gap_s=GAP_S)
    last, replay = None, []
    for room in (600.0, 300.0, 120.0, 60.0, 40.0) * 4:
        drill = again.next(last=last, room_s=room)
        assert drill is not None
        last = drill.name
        replay.append(drill.name)
    assert replay == drawn


class _FastSession:
    """Faults that take ``took_s`` of the clock (faked), far less than their estimates."""

    def __init__(self, clock: list[float], took_s: float) -> None:
        self.console = Console(file=io.StringIO(), width=200)
        self.clock = clock
        self.took_s = took_s

    def run_fault(self, drill: object, label: str, _say: object) -> FaultRun:
        start = self.clock[0]
        self.clock[0] += self.took_s
        return FaultRun(label, drill, journal(), (start, self.clock[0]), healed=True)  # type: ignore[arg-type]


def test_a_plan_done_early_is_topped_up_until_the_duration_has_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Faults that run faster than the catalogue's estimates leave time: the run draws
    more until none fits, so it lasts its duration; without a TopUp it ends with the
    plan."""
    import chaos.run as run_module

    clock = [1000.0]
    monkeypatch.setattr(run_module.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(run_module.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    catalogue = load_catalogue()
    by_name = {d.name: d for d in catalogue}
    ro = RandomOptions(seed=3, duration_s=600, gap_s=GAP_S)
    slots = plan(catalogue, seed=3, duration_s=600, gap_s=GAP_S)

    session = _FastSession(clock, took_s=5.0)
    faults, stopped = _run_plan(session, slots, by_name, ro)  # type: ignore[arg-type]
    assert stopped == ""
    assert len(faults) == len(slots)
    assert clock[0] - 1000.0 < 600 / 2  # the plan alone ended far before the duration

    clock[0] = 1000.0
    session = _FastSession(clock, took_s=5.0)
    top_up = TopUp(catalogue, seed=3, gap_s=GAP_S)
    faults, stopped = _run_plan(session, slots, by_name, ro, top_up)  # type: ignore[arg-type]
    assert stopped == ""
    assert len(faults) > len(slots)
    labels = [f.label for f in faults]
    assert labels[len(slots)].startswith(f"{len(slots) + 1:02d}-")
    cheapest = min(d.meta.duration_s for d in eligible(catalogue)) + GAP_S
    elapsed = clock[0] - 1000.0
    assert 600 - cheapest <= elapsed <= 600 + 5.0 + GAP_S
    assert all(a.drill.name != b.drill.name for a, b in itertools.pairwise(faults))
    assert "the plan is done with" in session.console.file.getvalue()


def test_a_tight_budget_still_gets_its_faults_from_the_fallback() -> None:
    """With room for just 20 of the cheapest, no uniform draw fits: the fallback plans 20,
    each leaving room for the rest."""
    catalogue = load_catalogue()
    cheapest = min(d.meta.duration_s for d in eligible(catalogue)) + GAP_S
    slots = plan(catalogue, seed=5, duration_s=20 * cheapest + 1, gap_s=GAP_S)
    assert len(slots) == 20
    assert slots[-1].at_s + slots[-1].duration_s + GAP_S <= 20 * cheapest + 1


def test_heavy_and_light_faults_fall_anywhere_in_the_run() -> None:
    """Not the heavy ones first and a tail of the cheapest: across seeds, the last five
    slots hold as many distinct drills as the first five."""
    catalogue = load_catalogue()
    plans = [plan(catalogue, seed=seed, duration_s=600) for seed in range(40)]
    head = {s.drill for p in plans for s in p[:5]}
    tail = {s.drill for p in plans for s in p[-5:]}
    assert len(tail) >= len(head) - 3


def test_the_plan_draws_from_the_whole_catalogue_but_never_the_control_run() -> None:
    catalogue = load_catalogue()
    drawn = {s.drill for seed in range(40) for s in plan(catalogue, seed=seed, duration_s=600)}
    assert drawn == {d.name for d in catalogue if not d.meta.control and d.meta.random}
    assert "control" not in drawn


def test_a_drill_random_mode_may_not_pick_is_never_planned_and_impossible_plans_fail() -> None:
    catalogue = load_catalogue()
    barred = [
        replace(d, meta=d.meta.model_copy(update={"random": False}))
        if d.name == "kill-cluster"
        else d
        for d in catalogue
    ]
    assert all(s.drill != "kill-cluster" for s in plan(barred, seed=3, duration_s=600))
    with pytest.raises(ValueError, match="20 faults need at least"):
        plan(catalogue, seed=1, duration_s=100)
    with pytest.raises(ValueError, match="no drill"):
        plan([d for d in catalogue if d.meta.control], seed=1, duration_s=600)


def test_make_chaos_random_reaches_the_runner_with_its_seed_and_duration() -> None:
    args = _parser().parse_args(["--mode", "random", "--seed", "42", "--duration-s", "600"])
    assert (args.mode, args.seed, args.duration_s, args.min_faults) == ("random", 42, 600, 20)
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    assert "--seed '$(SEED)'" in makefile
    assert "--duration-s '$(DURATION)'" in makefile


# --- the verdict and the summary ----------------------------------------------------------


def _calls(n: int, failed: int = 0) -> list[CallRecord]:
    return [
        CallRecord("", T0 + i * 0.01, 10.0, "UNAVAILABLE" if i < failed else "OK", "a", f"c{i}")
        for i in range(n)
    ]


def test_the_random_verdict_is_whole_run_availability_history_faults_and_their_checks() -> None:
    fine = data_plane(_calls(10_000, failed=5))
    assert random_reasons(fine, [], injected=20, min_faults=20, min_availability=0.999) == []
    poor = data_plane(_calls(10_000, failed=20))
    assert random_reasons(poor, [], injected=20, min_faults=20, min_availability=0.999) == [
        "availability 0.99800 < 0.999"
    ]
    lost = [Violation(LOST, "op-1", "acknowledged, but not in the store")]
    reasons = random_reasons(
        fine,
        lost,
        injected=19,
        min_faults=20,
        min_availability=0.999,
        unhealed=["07-kill-head"],
        deviated=["13-kill-appmaster"],
    )
    assert reasons == [
        "violations: lost 1",
        "only 19 faults injected (at least 20)",
        "not healed after 07-kill-head",
        "own checks missed by 13-kill-appmaster",
    ]
    assert random_reasons(data_plane([]), [], injected=20, min_faults=20, min_availability=0.9)


def test_a_fault_of_a_random_run_is_judged_on_its_own_checks_not_on_availability() -> None:
    drill = own_checks(load_drill(DRILLS_DIR / "kill-keeper-leader.json"))
    assert drill.thresholds.min_availability == 0
    assert drill.thresholds.max_recovery_s == 5  # its recovery bar still holds
    calls = _calls(300, failed=30)  # 10 % failed within this fault alone
    result = judge(
        "03-kill-keeper-leader",
        drill.meta.fault,
        control=False,
        thresholds=drill.thresholds,
        journal=journal(),
        calls=calls,
        history=[],
        violations=[],
        span=(T0, T0 + 30),
    )
    assert result.passed, result.reasons


def test_the_random_summary_lists_every_fault_with_its_time_and_the_seed() -> None:
    drill = own_checks(load_drill(DRILLS_DIR / "kill-keeper-leader.json"))
    faults = tuple(
        judge(
            f"{i:02d}-kill-keeper-leader",
            drill.meta.fault,
            control=False,
            thresholds=drill.thresholds,
            journal=journal(),
            calls=_calls(100),
            history=[],
            violations=[],
            span=(T0 + 30 * i, T0 + 30 * i + 20),
        )
        for i in (1, 2)
    )
    run = RandomRun(
        seed=42,
        duration_s=600,
        planned=21,
        min_faults=20,
        min_availability=0.999,
        started=T0,
        ended=T0 + 600,
        whole=data_plane(_calls(1000)),
        violations=(),
        faults=faults,
        reasons=("only 2 faults injected (at least 20)",),
    )
    text = random_summary_md("r1", run, {"stack": "2 clusters"})
    assert "seed 42" in text
    assert "`make chaos MODE=random SEED=42 DURATION=600`" in text
    assert "FAILED" in text
    assert "only 2 faults injected" in text
    rows = [line for line in text.splitlines() if line.startswith("| 0")]
    assert len(rows) == 2
    assert rows[0].startswith("| 01 | 30 s (")
    assert "| kill-keeper-leader | SIGKILL the Keeper leader | 20.0 s | completed |" in rows[0]
    assert rows[1].startswith("| 02 | 60 s (")


def test_every_drill_states_how_long_it_takes(tmp_path: Path) -> None:
    experiment = json.loads((DRILLS_DIR / "kill-proxy.json").read_text())
    del experiment["extensions"][0]["duration_s"]
    (tmp_path / "x.json").write_text(json.dumps(experiment))
    with pytest.raises(ValueError, match="duration_s"):
        load_drill(tmp_path / "x.json")
