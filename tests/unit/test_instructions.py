"""Instruction bodies, plans and release progress as typed models: the JSON they are
stored as keeps the keys rows already hold (rows written before they were models read
back and write again unchanged), a body is parsed once with every problem in one line,
and anything a body, plan or progress does not allow is refused, never dropped."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ha_serving._errors import InvalidSpec
from ha_serving._instructions import (
    DeployBody,
    EndReleaseBody,
    ReleaseBody,
    TrafficBody,
    parse_instruction,
)
from ha_serving._spec import parse_spec
from ha_serving.keeper._analysis import AnalysisPolicy
from ha_serving.keeper._plan import (
    Operation,
    Plan,
    ReleaseProgress,
    UnreadableOperation,
    target_clusters,
)
from ha_serving.keeper._releases import cluster_body, make_plan
from ha_serving.store import OperationRecord
from tests.unit.strategies import valid_specs

SPEC = parse_spec(
    {
        "name": "echo",
        "version": "v2",
        "code": {"dir": "x", "import_path": "echo:Echo"},
        "instances": 3,
        "config": {"prefix": "v2"},
        "placement": {"clusters": [{"name": "a"}, {"name": "b", "instances": 2, "weight": 50}]},
    }
)
SPEC_JSON = SPEC.model_dump(mode="json")
ANALYSIS = {
    "interval_s": 5.0,
    "min_requests": 20,
    "min_success_rate": 0.99,
    "max_p99_ms": 1000.0,
    "max_failed_checks": 2,
}

# --- rows as the Keeper wrote them before bodies, plans and progress were models ---------

ROWS: dict[str, dict[str, Any]] = {
    "deploy": {"spec": SPEC_JSON, "package": "p2", "kind": "code", "generation": 4},
    "release": {
        "kind": "release",
        "op": "canary-1",
        "mode": "canary",
        "spec": SPEC_JSON,
        "package": "p2",
        "instances": 1,
        "weight": 10,
    },
    "promote": {"kind": "promote", "op": "canary-1"},
    "abort": {"kind": "abort", "op": "bg-1"},
    "drain": {"kind": "traffic", "weight": 0},
    "restore": {"kind": "traffic", "weight": None},
}
PLAN_ROWS: dict[str, dict[str, Any]] = {
    "rolling, drained": {
        "clusters": [
            {"name": "a", "instances": 3, "weight": 100},
            {"name": "b", "instances": 2, "weight": 50},
        ],
        "spec": SPEC_JSON,
        "package": "p2",
        "generation": 4,
        "kind": "code",
        "request": "ab" * 32,
        "drain": True,
    },
    "before op_id retries": {
        "clusters": [{"name": "a", "instances": 3, "weight": 100}],
        "spec": SPEC_JSON,
        "package": "p2",
        "generation": 1,
        "kind": "deploy",
    },
    "canary": {
        "clusters": [{"name": "a", "instances": 3, "weight": 100}],
        "spec": SPEC_JSON,
        "package": "p2",
        "generation": 5,
        "kind": "canary",
        "request": "cd" * 32,
        "release": {
            "mode": "canary",
            "steps": [10, 50, 100],
            "pause_s": 30.0,
            "instances": {"a": 1},
            "analysis": ANALYSIS,
        },
    },
}
CHECK = {
    "requests": 50,
    "failures": 0,
    "success_rate": 1.0,
    "p99_ms": 5.0,
    "stable_requests": 30,
    "stable_success_rate": None,
    "stable_p99_ms": None,
    "verdict": "pass",
    "reason": "",
    "at": 1700000000.5,
    "step": 1,
    "weight": 10,
}
PROGRESS_ROWS: dict[str, dict[str, Any]] = {
    "sent": {"weight": 0},
    "step clock": {"weight": 10, "step": 1, "step_at": 1700000000.0},
    "checked": {
        "weight": 10,
        "step": 1,
        "step_at": 1700000000.0,
        "checks": [CHECK, {**CHECK, "verdict": "fail", "reason": "p99 300 ms > 100 ms"}],
        "failed_checks": 1,
        "last_failure": "p99 300 ms > 100 ms",
    },
    "ending, failed": {
        "weight": 0,
        "step": 1,
        "step_at": 1.0,
        "ending": "abort",
        "reason": "cluster b rejected c-1#1@b: invalid instruction: no",
        "failed": True,
    },
}


@pytest.mark.parametrize("name", ROWS)
def test_a_stored_body_reads_back_and_writes_the_same_json(name: str) -> None:
    row = ROWS[name]
    body = parse_instruction(row)
    assert body.to_record() == row
    assert parse_instruction(json.dumps(row)) == body  # as the link carries it


@pytest.mark.parametrize("name", PLAN_ROWS)
def test_a_stored_plan_reads_back_and_writes_the_same_json(name: str) -> None:
    row = PLAN_ROWS[name]
    assert Plan.from_record(row).to_record() == row


@pytest.mark.parametrize("name", PROGRESS_ROWS)
def test_a_stored_progress_reads_back_and_writes_the_same_json(name: str) -> None:
    row = PROGRESS_ROWS[name]
    assert ReleaseProgress.from_record(row).to_record() == row


def test_no_progress_yet_is_the_empty_progress_and_writes_nothing() -> None:
    assert ReleaseProgress.from_record(None) == ReleaseProgress()
    assert ReleaseProgress().to_record() == {}


def test_the_keepers_body_for_a_cluster_carries_that_clusters_count() -> None:
    plan = make_plan(SPEC, "p2", 4, "code", ["a", "b"])
    body = cluster_body(plan, plan.target("b"))
    assert body.to_record() == {**ROWS["deploy"], "spec": {**SPEC_JSON, "instances": 2}}


def test_a_body_without_a_kind_is_a_deploy() -> None:
    body = parse_instruction({"spec": SPEC_JSON, "package": "p"})
    assert isinstance(body, DeployBody)
    assert body.kind == "deploy"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("{", "not JSON: "),
        ("[1, 2]", "not a JSON object but list"),
        ({"kind": 3}, "unknown kind 3"),
        ({"kind": "resize"}, "unknown kind 'resize'"),
        ({"kind": "release", "op": "c"}, "a release instruction needs mode, spec, package"),
        ({"kind": "promote", "op": 7}, "op: Input should be a valid string"),
        ({"kind": "abort", "op": "c", "why": "x"}, "a abort instruction has no field why"),
        ({"kind": "traffic", "weight": True}, "weight: Input should be a valid integer"),
        ({"kind": "traffic", "weight": 1001}, "weight: Input should be less than or equal"),
        ({**ROWS["release"], "weight": 101}, "weight: Input should be less than or equal"),
        ({**ROWS["release"], "mode": "big_bang"}, "mode: Input should be 'canary'"),
        ({**ROWS["deploy"], "kind": "canary"}, "unknown kind 'canary'"),
        ({**ROWS["deploy"], "spec": {**SPEC_JSON, "proxies": 0}}, "bad spec: proxies: "),
    ],
)
def test_a_body_it_cannot_carry_out_is_refused_in_one_line(raw: Any, why: str) -> None:
    with pytest.raises(InvalidSpec) as refused:
        parse_instruction(raw)
    assert why in str(refused.value)
    assert "\n" not in str(refused.value)


def test_every_problem_of_a_body_is_said_at_once() -> None:
    bad = {**ROWS["release"], "instances": -1, "weight": "ten", "extra": 1}
    del bad["op"]
    with pytest.raises(InvalidSpec) as refused:
        parse_instruction(bad)
    assert refused.value.problems == [
        "a release instruction needs op",
        "instances: Input should be greater than or equal to 0",
        "weight: Input should be a valid integer",
        "a release instruction has no field extra",
    ]


@settings(max_examples=60, deadline=None)
@given(valid_specs(), st.sampled_from(["deploy", "config", "code", "scale"]))
def test_any_valid_spec_survives_the_store_and_the_link(spec: dict[str, Any], kind: str) -> None:
    """What the Keeper writes is what the AppMaster reads: build, store, carry, parse."""
    body = DeployBody.model_validate({"spec": spec, "package": "p", "kind": kind})
    assert parse_instruction(json.dumps(body.to_record())) == body


def test_the_union_tells_the_kinds_apart() -> None:
    kinds = {name: type(parse_instruction(row)) for name, row in ROWS.items()}
    assert kinds == {
        "deploy": DeployBody,
        "release": ReleaseBody,
        "promote": EndReleaseBody,
        "abort": EndReleaseBody,
        "drain": TrafficBody,
        "restore": TrafficBody,
    }


def test_a_plan_refuses_what_it_cannot_be() -> None:
    canary = PLAN_ROWS["canary"]
    with pytest.raises(ValidationError, match="a canary plan needs a release"):
        Plan.from_record({k: v for k, v in canary.items() if k != "release"})
    with pytest.raises(ValidationError, match="kind"):
        Plan.from_record({**PLAN_ROWS["before op_id retries"], "kind": "release"})
    with pytest.raises(ValidationError, match="surge"):
        Plan.from_record({**PLAN_ROWS["before op_id retries"], "surge": 1})
    policy = AnalysisPolicy.model_validate(ANALYSIS)
    assert Plan.from_record(canary).weighted().analysis == policy


def test_make_plan_refuses_a_cluster_count_outside_autoscalings_bounds() -> None:
    """Each cluster's instruction carries the spec with its count: one that the spec's
    autoscaling bounds refuse is refused when the plan is made, not by the AppMaster."""
    spec = parse_spec(
        {
            **SPEC_JSON,
            "autoscaling": {"min_instances": 2, "max_instances": 4},
            "placement": {"clusters": [{"name": "a", "instances": 1}]},
        }
    )
    with pytest.raises(ValueError, match=r"^cluster a: .*outside autoscaling's 2\.\.4"):
        make_plan(spec, "p", 1, "deploy", ["a"])


def test_an_operation_that_does_not_parse_says_which_part_in_one_line() -> None:
    record = OperationRecord(op_id="x-1", service="echo", kind="code", plan={"steps": [1]})
    with pytest.raises(UnreadableOperation) as unreadable:
        Operation.parse(record)
    assert str(unreadable.value).startswith("the plan of x-1 does not parse: clusters: ")
    bad = OperationRecord(
        op_id="x-2",
        service="echo",
        kind="canary",
        plan=PLAN_ROWS["canary"],
        progress={"ending": "explode"},
    )
    with pytest.raises(UnreadableOperation, match=r"^the progress of x-2 does not parse: ending"):
        Operation.parse(bad)


def test_the_targets_of_any_stored_plan_are_read_leniently() -> None:
    """The leader keeps an AppMaster for the targets of each service's latest operation,
    finished ones too: their plans may be an older Keeper's."""
    assert target_clusters(PLAN_ROWS["rolling, drained"]) == ["a", "b"]
    assert target_clusters({**PLAN_ROWS["before op_id retries"], "kind": "release"}) == ["a"]
    assert target_clusters({"steps": [1, 2]}) == []
