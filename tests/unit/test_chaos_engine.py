"""Real Chaos Toolkit runs of the real drill files, with the stack's faults and probes
replaced by fakes: the journal has the shape the report reads (method runs with start,
end and status; steady states; rollbacks), the configuration reaches the activities,
heal runs even when the steady state fails first, and the verdict follows."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("chaoslib")

from chaoslib.experiment import run_experiment

from chaos import actions, probes
from chaos.catalogue import DRILLS_DIR, load_drill
from chaos.history import CallRecord
from chaos.report import judge, method_runs
from chaos.run import CHAOS_SETTINGS, _Events, _rolled_back


class Fakes:
    """Stand-ins for every activity a drill names, recording how they were called."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.answers: dict[str, list[Any]] = {}
        for module in (actions, probes):
            for name in module.ACTIVITIES:
                monkeypatch.setattr(module, name, self._fake(name))

    def _fake(self, name: str) -> Callable[..., Any]:
        def fake(configuration: dict[str, Any], **kwargs: Any) -> Any:
            self.calls.append((name, {**kwargs, "run_dir": configuration["run_dir"]}))
            queued = self.answers.get(name)
            if queued:
                return queued.pop(0)
            return True if name in STEADY else {"did": name}

        return fake

    def names(self) -> list[str]:
        return [n for n, _ in self.calls]


STEADY = {"stack_is_whole", "one_leader", "serves_everywhere"}


def run(drill: str, fakes: Fakes, tmp_path: Path) -> dict[str, Any]:
    experiment = load_drill(DRILLS_DIR / f"{drill}.json").fresh_experiment()
    variables = {"run_dir": str(tmp_path), "service": "svc", "hold_s": 0, "settle_s": 0}
    said: list[str] = []
    journal: dict[str, Any] = run_experiment(
        experiment,
        settings=CHAOS_SETTINGS,
        experiment_vars=(variables, {}),
        event_handlers=[_Events(said.append)],
    )
    assert "fault" in said or journal["run"] == []
    return journal


def test_a_drill_runs_through_chaos_toolkit_and_passes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fakes = Fakes(monkeypatch)
    journal = run("kill-keeper-leader", fakes, tmp_path)
    assert journal["status"] == "completed"
    assert not journal["deviated"]
    assert [r.name for r in method_runs(journal)] == [
        "kill-keeper-leader",
        "new-leader-elected",
        "restart-dead-keepers",
    ]
    assert ("kill_keeper", {"role": "leader", "run_dir": str(tmp_path)}) in fakes.calls
    assert fakes.names()[-1] == "heal"
    assert _rolled_back(journal)
    runs = method_runs(journal)
    calls = [CallRecord("d", runs[0].start + i * 0.001, 5.0, "OK", "a") for i in range(100)]
    drill = load_drill(DRILLS_DIR / "kill-keeper-leader.json")
    result = judge(
        drill.name,
        drill.meta.fault,
        control=False,
        thresholds=drill.thresholds,
        journal=journal,
        calls=calls,
        history=[],
        violations=[],
        span=(runs[0].start - 1, runs[-1].end + 1),
    )
    assert result.passed, result.reasons
    assert result.recovery_s is not None
    assert 0 <= result.recovery_s < 1


def test_configuration_reaches_the_activities(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fakes = Fakes(monkeypatch)
    run("kill-cluster", fakes, tmp_path)
    assert ("kill_cluster", {"cluster": "b", "run_dir": str(tmp_path)}) in fakes.calls
    assert ("wait_serving_from", {"cluster": "b", "timeout_s": 120, "run_dir": str(tmp_path)}) in (
        fakes.calls
    )


def test_heal_runs_even_when_the_steady_state_fails_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fakes = Fakes(monkeypatch)
    fakes.answers["stack_is_whole"] = [False]
    journal = run("kill-proxy", fakes, tmp_path)
    assert journal["run"] == []
    assert "kill_actor" not in fakes.names()
    assert fakes.names()[-1] == "heal"
    drill = load_drill(DRILLS_DIR / "kill-proxy.json")
    result = judge(
        drill.name,
        drill.meta.fault,
        control=False,
        thresholds=drill.thresholds,
        journal=journal,
        calls=[CallRecord("d", 1.0, 1.0, "OK", "a")],
        history=[],
        violations=[],
        span=(0.0, 2.0),
    )
    assert any("not met before" in r for r in result.reasons)


def test_a_steady_state_lost_after_the_fault_is_a_deviation(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fakes = Fakes(monkeypatch)
    fakes.answers["one_leader"] = [True, False]
    journal = run("sigstop-keeper-leader", fakes, tmp_path)
    assert journal["deviated"]
    assert "resume_keepers" in fakes.names()
    assert fakes.names()[-1] == "heal"


def test_every_function_a_drill_names_is_listed_as_an_activity() -> None:
    named = {
        a["provider"]["func"]
        for path in DRILLS_DIR.glob("*.json")
        for part in ("method", "rollbacks")
        for a in json.loads(path.read_text())[part]
    }
    named |= STEADY
    assert named <= set(actions.ACTIVITIES) | set(probes.ACTIVITIES)


def _pause_vars(experiment: dict[str, Any]) -> dict[str, Any]:
    """Every configuration value a pause of the drill reads, set to 0 (a test waits for
    nothing)."""
    names = {
        a["pauses"][when].strip("${}")
        for a in experiment["method"]
        for when in ("before", "after")
        if isinstance(a.get("pauses", {}).get(when), str)
    }
    return dict.fromkeys(names, 0)


@pytest.mark.parametrize("path", sorted(DRILLS_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_every_drill_runs_through_chaos_toolkit_with_its_arguments_substituted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, path: Path
) -> None:
    fakes = Fakes(monkeypatch)
    drill = load_drill(path)
    experiment = drill.fresh_experiment()
    variables = {"run_dir": str(tmp_path), "service": "svc", "settle_s": 0}
    variables |= _pause_vars(experiment)
    journal = run_experiment(experiment, settings=CHAOS_SETTINGS, experiment_vars=(variables, {}))
    assert journal["status"] == "completed", journal["status"]
    assert [r.name for r in method_runs(journal)] == [a["name"] for a in drill.experiment["method"]]
    assert fakes.names()[-1] == "heal"
    for name, kwargs in fakes.calls:
        assert not any("${" in str(v) for v in kwargs.values()), (name, kwargs)


def test_the_clock_drill_jumps_each_faked_keeper_both_ways(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fakes = Fakes(monkeypatch)
    run("clock-jump-keepers", fakes, tmp_path)
    jumps = [(k["which"], k["offset_s"]) for n, k in fakes.calls if n == "jump_keeper_clock"]
    assert jumps == [(0, 90), (1, -90), (0, -90), (1, 90)]
    assert fakes.names().index("kill_keeper") > fakes.names().index("jump_keeper_clock")


def test_the_resets_drill_hits_one_clusters_links_then_heals_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fakes = Fakes(monkeypatch)
    experiment = load_drill(DRILLS_DIR / "client-proxy-resets.json").fresh_experiment()
    variables = {"run_dir": str(tmp_path), "service": "svc", "settle_s": 0, "hold_s": 0}
    run_experiment(
        experiment, settings=CHAOS_SETTINGS, experiment_vars=(variables | {"refuse_s": 0}, {})
    )
    faults = [k for n, k in fakes.calls if n == "net_fault"]
    assert [(f["link"], f["mode"], f.get("reset_every_s")) for f in faults] == [
        ("client-a", "reset", 5),
        ("client-a", "reset", None),
    ]
    assert ("net_heal", {"link": "client-a", "run_dir": str(tmp_path)}) in fakes.calls
