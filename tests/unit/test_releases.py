"""The release planner (pure): clusters are rolled in plan order, one at a time; a
cluster moves the step only once its AppMaster converged; a rollback fails the op."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ha_serving._instructions import DeployBody
from ha_serving._jobstate import JobState
from ha_serving._spec import Revision, parse_spec
from ha_serving._status import RolloutStatus
from ha_serving.keeper._plan import Operation
from ha_serving.keeper._releases import (
    Advance,
    Finish,
    Instruct,
    cluster_body,
    decide,
    instruction_op_id,
    make_plan,
)
from ha_serving.store import Instruction, OperationRecord
from tests.unit.jobstates import job_state, rollout

SPEC = parse_spec(
    {
        "name": "svc",
        "version": "2",
        "code": {"dir": "x", "import_path": "m:C"},
        "instances": 3,
        "placement": {"clusters": [{"name": "a"}, {"name": "b", "instances": 1}]},
    }
)


def _op(step: int = 0) -> Operation:
    """The operation as the leader reads it: its row, stored and parsed."""
    plan = make_plan(SPEC, "pkg", 7, "code", ["a", "b", "c"]).to_record()
    return Operation.parse(
        OperationRecord(op_id="op", service="svc", kind="code", plan=plan, step=step)
    )


def _moved(op: Operation, **changes: Any) -> Operation:
    """``op`` after the leader wrote ``changes`` (step, status) to its row."""
    return op.written(replace(op.record, **changes))


def _sent(op: Operation, cluster: str) -> Instruction:
    return Instruction(1, cluster, "svc", instruction_op_id(op, cluster), 1, {})


def _state(body: DeployBody, *, done: bool = True, rolled_back: bool = False) -> JobState:
    spec = body.spec
    desired = Revision(
        version=spec.version, package=body.package, import_path="m:C", config=spec.config
    )
    running = desired if done else desired.model_copy(update={"version": "1"})
    history = (rollout("op@a", desired, RolloutStatus.ROLLED_BACK),) if rolled_back else ()
    return job_state(
        spec,
        desired,
        running=running,
        rollout=None if done else rollout("op@a", desired),
        history=history,
    )


def test_plan_keeps_the_placement_order_and_per_cluster_instances() -> None:
    """Targets follow the spec's order; a cluster's own instance count wins."""
    plan = _op().plan
    assert [(t.name, t.instances) for t in plan.clusters] == [("a", 3), ("b", 1)]


def test_unknown_cluster_or_too_many_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown clusters"):
        make_plan(SPEC, "pkg", 1, "deploy", ["a"])
    any3 = parse_spec(
        {
            "name": "s",
            "version": "1",
            "code": {"dir": "x", "import_path": "m:C"},
            "placement": {"any": 3},
        }
    )
    with pytest.raises(ValueError, match="wants 3"):
        make_plan(any3, "pkg", 1, "deploy", ["a", "b"])


def test_first_cluster_is_instructed_then_waited_for() -> None:
    """Nothing sent yet: instruct a. Sent but not converged: wait. Converged: step to b."""
    op = _op()
    [first] = decide(op, {"a": None, "b": None}, {"a": None, "b": None})
    assert isinstance(first, Instruct)
    assert first.cluster == "a"
    body = cluster_body(op.plan, op.plan.clusters[0])
    busy = {"a": _state(body, done=False), "b": None}
    assert decide(op, {"a": _sent(op, "a"), "b": None}, busy) == []
    done = {"a": _state(body), "b": None}
    assert decide(op, {"a": _sent(op, "a"), "b": None}, done) == [Advance(1)]


def test_last_cluster_converged_finishes_and_rollback_fails() -> None:
    op = _op(step=1)
    body = cluster_body(op.plan, op.plan.clusters[1])
    states = {"b": _state(body)}
    assert decide(op, {"b": _sent(op, "b")}, states) == [Advance(2), Finish("succeeded")]
    op_a = _op()
    body_a = cluster_body(op_a.plan, op_a.plan.clusters[0])
    failed = decide(
        op_a, {"a": _sent(op_a, "a")}, {"a": _state(body_a, done=False, rolled_back=True)}
    )
    assert failed == [Finish("failed", "cluster a rolled the release back")]


@given(st.lists(st.sampled_from(["sent", "converged", "nothing"]), min_size=0, max_size=30))
def test_steps_only_move_forward_and_one_cluster_at_a_time(events: list[str]) -> None:
    """Driven by random observations, the op instructs clusters strictly in plan order,
    never instructs a cluster before the previous one converged, and ends succeeded."""
    op = _op()
    last: dict[str, Instruction | None] = {"a": None, "b": None}
    states: dict[str, JobState | None] = {"a": None, "b": None}
    instructed: list[str] = []
    for event in [*events, "converged", "converged", "converged", "converged"]:
        if op.status == "succeeded":
            break
        for d in decide(op, last, states):
            if isinstance(d, Instruct):
                assert d.cluster == op.plan.clusters[op.step].name
                assert all(states[c] is not None for c in instructed if c != d.cluster)
                instructed.append(d.cluster)
                last[d.cluster] = _sent(op, d.cluster)
            elif isinstance(d, Advance):
                assert d.step == op.step + 1
                op = _moved(op, step=d.step)
            elif isinstance(d, Finish):
                op = _moved(op, status=d.status)
        current = op.plan.clusters[min(op.step, 1)].name
        if event == "converged" and last.get(current) is not None:
            states[current] = _state(cluster_body(op.plan, op.plan.clusters[min(op.step, 1)]))
    assert op.status == "succeeded"
    assert instructed == ["a", "b"]


class ReleaseMachine(RuleBasedStateMachine):
    """Leader rounds interleaved with AppMasters converging or rolling back, and leader
    failovers (a new leader just decides again from the same rows)."""

    def __init__(self) -> None:
        super().__init__()
        self.op = _op()
        self.last: dict[str, Instruction | None] = {"a": None, "b": None}
        self.states: dict[str, JobState | None] = {"a": None, "b": None}
        self.sent: list[str] = []
        self.converged: set[str] = set()
        self.rolled_back: set[str] = set()

    def _target(self) -> str | None:
        targets = self.op.plan.clusters
        return targets[self.op.step].name if self.op.step < len(targets) else None

    @rule()
    def leader_round(self) -> None:
        if self.op.status in ("succeeded", "failed"):
            assert decide(self.op, self.last, self.states) == []
            return
        for d in decide(self.op, self.last, self.states):
            if isinstance(d, Instruct):
                assert d.cluster == self._target()
                assert d.cluster not in self.sent, "a cluster was instructed twice"
                self.sent.append(d.cluster)
                self.last[d.cluster] = _sent(self.op, d.cluster)
            elif isinstance(d, Advance):
                assert d.step == self.op.step + 1
                self.op = _moved(self.op, step=d.step)
            elif isinstance(d, Finish):
                self.op = _moved(self.op, status=d.status)

    @rule()
    def instructed_appmaster_converges(self) -> None:
        target = self._target()
        if target is None or self.last.get(target) is None or target in self.rolled_back:
            return
        index = self.op.step
        self.states[target] = _state(cluster_body(self.op.plan, self.op.plan.clusters[index]))
        self.converged.add(target)

    @rule()
    def instructed_appmaster_is_still_rolling(self) -> None:
        target = self._target()
        if target is None or self.last.get(target) is None or target in self.converged:
            return
        if target not in self.rolled_back:
            body = cluster_body(self.op.plan, self.op.plan.clusters[self.op.step])
            self.states[target] = _state(body, done=False)

    @rule()
    def instructed_appmaster_rolls_back(self) -> None:
        target = self._target()
        if target is None or self.last.get(target) is None or target in self.converged:
            return
        body = cluster_body(self.op.plan, self.op.plan.clusters[self.op.step])
        state = _state(body, done=False)
        back = rollout(instruction_op_id(self.op, target), state.desired, RolloutStatus.ROLLED_BACK)
        self.states[target] = state.model_copy(update={"history": (back,)})
        self.rolled_back.add(target)

    @invariant()
    def instructed_clusters_are_a_prefix_of_the_plan(self) -> None:
        order = [t.name for t in self.op.plan.clusters]
        assert self.sent == order[: len(self.sent)]

    @invariant()
    def a_step_is_passed_only_once_its_cluster_converged(self) -> None:
        order = [t.name for t in self.op.plan.clusters]
        assert set(order[: self.op.step]) <= self.converged

    @invariant()
    def outcomes_match_what_happened(self) -> None:
        if self.op.status == "succeeded":
            assert self.converged == {"a", "b"}
        if self.op.status == "failed":
            assert self.rolled_back


TestReleaseMachine = ReleaseMachine.TestCase
TestReleaseMachine.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
