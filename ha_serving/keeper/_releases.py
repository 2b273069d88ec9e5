"""Releases across clusters, decided purely: ``decide(op, observed) -> list[Decision]``.

An operation (deploy, config or code update, scale) is a durable row whose ``plan``
lists its target clusters in order and whose ``step`` is the cluster being rolled.
Clusters are rolled one at a time: the leader instructs the AppMaster of the cluster at
``step`` (an instruction carries the op, the leader's epoch and the per-cluster spec),
waits until that AppMaster's persisted state shows the revision converged, then moves
to the next step. With ``drain`` in the plan, each cluster's traffic weight is set to 0
before it is rolled (clients move to the others) and restored after. A new leader reads
the same row and simply decides again.

=========  ====================================================  =================
status     when                                                  next
=========  ====================================================  =================
pending    created by any Keeper replica, durable before ack     running,
                                                                 superseded
running    instructing / waiting for cluster ``plan[step]``      running, succeeded,
                                                                 failed, superseded
succeeded  every cluster converged
failed     a cluster rolled the revision back, or rejected an
           instruction it cannot carry out (error says which, why)
superseded a newer operation of the same service took over
=========  ====================================================  =================

(The whole table of operation statuses, with a release's, is
``ha_serving._status.OPERATION_TRANSITIONS``; the store refuses any other move.)

Canary and blue-green operations (kinds in ``_weighted.WEIGHTED``) move traffic by
weight instead of cluster by cluster; ``_weighted.decide_weighted`` decides them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ha_serving._jobstate import JobState
from ha_serving._spec import ServiceSpec, scaled_instances
from ha_serving._status import ACTIVE, OperationStatus
from ha_serving.store import Instruction, OperationRecord


@dataclass(frozen=True)
class Instruct:
    cluster: str
    op_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Advance:
    step: int


@dataclass(frozen=True)
class Finish:
    status: OperationStatus
    error: str | None = None


@dataclass(frozen=True)
class Progress:
    """Replace the operation's progress record (a weighted release's step clock, weight,
    analysis and how it ends)."""

    progress: dict[str, Any]


Decision = Instruct | Advance | Finish | Progress


def make_plan(
    spec: ServiceSpec, package: str, generation: int, kind: str, registered: list[str]
) -> dict[str, Any]:
    """The operation's plan: target clusters in order, with their instance counts."""
    placement = spec.placement
    if placement.clusters:
        unknown = [c.name for c in placement.clusters if c.name not in registered]
        if unknown:
            raise ValueError(f"unknown clusters {unknown}; registered: {registered}")
        targets = [
            {
                "name": c.name,
                "instances": spec.instances if c.instances is None else c.instances,
                "weight": c.weight,
            }
            for c in placement.clusters
        ]
    else:
        want = placement.any or 1
        if want > len(registered):
            raise ValueError(f"placement wants {want} clusters; {len(registered)} registered")
        targets = [
            {"name": name, "instances": spec.instances, "weight": 100}
            for name in sorted(registered)[:want]
        ]
    return {
        "clusters": targets,
        "spec": spec.model_dump(mode="json"),
        "package": package,
        "generation": generation,
        "kind": kind,
    }


def cluster_body(plan: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Any]:
    """The instruction for one cluster: the spec with that cluster's instance count."""
    spec = {**plan["spec"], "instances": target["instances"]}
    return {
        "spec": spec,
        "package": plan["package"],
        "kind": plan["kind"],
        "generation": plan["generation"],
    }


def instruction_op_id(op: OperationRecord, cluster: str) -> str:
    return f"{op.op_id}@{cluster}"


def decide(  # noqa: PLR0911 - one return per row of the table above
    op: OperationRecord,
    last: dict[str, Instruction | None],
    states: Mapping[str, JobState | None],
) -> list[Decision]:
    """The next decisions for ``op``, given the last instruction sent to each target
    cluster and each target AppMaster's persisted state (None: no state yet)."""
    if op.status not in ACTIVE:
        return []  # finished operations are history: nothing more to decide
    targets = op.plan["clusters"]
    if op.step >= len(targets):
        return [Finish(OperationStatus.SUCCEEDED)]
    target = targets[op.step]
    cluster = target["name"]
    body = cluster_body(op.plan, target)
    op_id = instruction_op_id(op, cluster)
    sent = last.get(cluster)
    state = states.get(cluster)
    if op.plan.get("drain") and len(targets) > 1 and state is not None:
        return _drained_step(op, sent, state, body)
    if sent is None or sent.op_id != op_id:
        return [Instruct(cluster, op_id, body)]
    if state is None:
        return []
    why = state.rejection(op_id)
    if why is not None:
        return [Finish(OperationStatus.FAILED, f"cluster {cluster} rejected {op_id}: {why}")]
    if state.rolled_back(op_id):
        return [Finish(OperationStatus.FAILED, f"cluster {cluster} rolled the release back")]
    if converged(state, body):
        return _next(op)
    return []


def _next(op: OperationRecord) -> list[Decision]:
    nxt = op.step + 1
    done: list[Decision] = [Advance(nxt)]
    if nxt >= len(op.plan["clusters"]):
        done.append(Finish(OperationStatus.SUCCEEDED))
    return done


def _drained_step(  # noqa: PLR0911 - one return per sub-step
    op: OperationRecord, sent: Instruction | None, state: JobState, body: dict[str, Any]
) -> list[Decision]:
    """One cluster's step with its traffic drained first: its weight goes to 0 (clients
    move to the other clusters), it is rolled, its weight comes back, then the next.
    The last instruction sent to the cluster says which of the three it is at; an
    update the cluster rejected gets its weight restored, then fails the operation."""
    cluster = op.plan["clusters"][op.step]["name"]
    update = instruction_op_id(op, cluster)
    drain, restore = f"{op.op_id}#drain@{cluster}", f"{op.op_id}#restore@{cluster}"
    at = sent.op_id if sent is not None else ""
    if at not in (drain, update, restore):
        return [Instruct(cluster, drain, {"kind": "traffic", "weight": 0})]
    if at != update and state.rejection(at) is not None:
        return [
            Finish(
                OperationStatus.FAILED, f"cluster {cluster} rejected {at}: {state.rejection(at)}"
            )
        ]
    if at == drain:
        return [Instruct(cluster, update, body)] if state.cluster_weight == 0 else []
    if at == update:
        if state.rolled_back(update) or converged(state, body) or state.rejection(update):
            return [Instruct(cluster, restore, {"kind": "traffic", "weight": None})]
        return []
    if state.cluster_weight is not None:
        return []
    why = state.rejection(update)
    if why is not None:
        return [Finish(OperationStatus.FAILED, f"cluster {cluster} rejected {update}: {why}")]
    if state.rolled_back(update):
        return [Finish(OperationStatus.FAILED, f"cluster {cluster} rolled the release back")]
    return _next(op)


def converged(state: JobState, body: Mapping[str, Any]) -> bool:
    """The AppMaster serves exactly ``body``'s revision on every instance, at the count
    the instruction asks for (or, autoscaled, the autoscaler's within its bounds):
    ``JobState.applied``."""
    spec = body["spec"]
    count = scaled_instances(spec, state.autoscaled)
    return state.applied(spec["version"], body["package"], spec.get("config", {}), count)
