"""What the drills' target helpers do when the stack is half back: Ray's state API (the
head's dashboard) asked again while a restarted head brings it up, and each experiment's
probes seeing only its own faults (a random run's fault 13 once timed an AppMaster
killed by fault 10, because its own kill had failed)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ray.util.state.exception import ServerUnavailable

from chaos import actions, probes, target
from chaos.run import Session
from chaos.target import DrillError


def _topo() -> Any:
    head = SimpleNamespace(address="127.0.0.1", ports=SimpleNamespace(dashboard=8265))
    return SimpleNamespace(cluster=lambda _name: SimpleNamespace(head=head))


def test_the_state_api_is_asked_again_while_the_dashboard_comes_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[str] = []
    row = SimpleNamespace(name="svc-w0", pid=42, state="ALIVE")

    def list_actors(**kw: Any) -> list[Any]:
        asked.append(kw["address"])
        if len(asked) < 3:
            raise ServerUnavailable("Failed to connect to API server")
        return [row]

    monkeypatch.setattr("ray.util.state.list_actors", list_actors)
    found = target.actors(_topo(), "a", "svc", "worker")
    assert [a.name for a in found] == ["svc-w0"]
    assert asked == ["http://127.0.0.1:8265"] * 3


def test_a_dashboard_that_never_comes_up_still_fails_in_bounded_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def never(**_kw: Any) -> list[Any]:
        raise ServerUnavailable("Failed to connect to API server")

    monkeypatch.setattr("ray.util.state.list_actors", never)
    monkeypatch.setattr(target, "STATE_API_WAIT_S", 1.0)
    with pytest.raises(ServerUnavailable):
        target.actors(_topo(), "a", "svc", "worker")


def test_each_experiment_starts_with_no_fault_of_an_earlier_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    actions.INJECTED.append(actions.Injected("kill_actor:appmaster", "svc-appmaster", 1.0))
    seen: list[list[actions.Injected]] = []

    def run_experiment(_experiment: Any, **_kw: Any) -> dict[str, Any]:
        seen.append(list(actions.INJECTED))
        with pytest.raises(DrillError, match="no AppMaster was killed"):
            probes.wait_control_back({"run_dir": str(tmp_path)}, "a", timeout_s=0.1)
        return {"status": "completed"}

    monkeypatch.setattr("chaos.run.run_experiment", run_experiment)
    session = Session.__new__(Session)  # no stack: only what experiment() reads
    session.topo = SimpleNamespace(run_dir=tmp_path)  # type: ignore[assignment]
    drill = SimpleNamespace(fresh_experiment=dict)
    assert session.experiment(drill, lambda _text: None) == {"status": "completed"}  # type: ignore[arg-type]
    assert seen == [[]]
