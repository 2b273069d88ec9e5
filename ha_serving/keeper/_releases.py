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

from pydantic import ValidationError

from ha_serving._instructions import Body, DeployBody, TrafficBody
from ha_serving._jobstate import JobState
from ha_serving._spec import ServiceSpec
from ha_serving._status import ACTIVE, OperationStatus
from ha_serving.keeper._plan import (
    ClusterTarget,
    Operation,
    Plan,
    ReleasePlan,
    ReleaseProgress,
)
from ha_serving.store import Instruction


@dataclass(frozen=True)
class Instruct:
    cluster: str
    op_id: str
    body: Body


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

    progress: ReleaseProgress


Decision = Instruct | Advance | Finish | Progress


def plan_targets(spec: ServiceSpec, registered: list[str]) -> tuple[ClusterTarget, ...]:
    """The clusters ``spec``'s placement names among the ``registered`` ones, in order,
    with their instance counts; ValueError if the placement or a cluster's count does
    not fit."""
    placement = spec.placement
    if placement.clusters:
        unknown = [c.name for c in placement.clusters if c.name not in registered]
        if unknown:
            raise ValueError(f"unknown clusters {unknown}; registered: {registered}")
        targets = [
            ClusterTarget(
                name=c.name,
                instances=spec.instances if c.instances is None else c.instances,
                weight=c.weight,
            )
            for c in placement.clusters
        ]
    else:
        want = placement.any or 1
        if want > len(registered):
            raise ValueError(f"placement wants {want} clusters; {len(registered)} registered")
        targets = [
            ClusterTarget(name=name, instances=spec.instances, weight=100)
            for name in sorted(registered)[:want]
        ]
    for t in targets:  # each cluster's instruction carries the spec with its count
        _check_count(spec, t)
    return tuple(targets)


def make_plan(
    spec: ServiceSpec,
    package: str,
    generation: int,
    kind: str,
    registered: list[str],
    *,
    drain: bool = False,
    release: ReleasePlan | None = None,
) -> Plan:
    """The operation's plan: its target clusters (``plan_targets``) and what it rolls
    out; a canary or blue-green has its ``release`` (``_weighted.release_plan``).
    ValueError (pydantic's ValidationError) for an unknown ``kind``."""
    return Plan.model_validate(
        {
            "clusters": plan_targets(spec, registered),
            "spec": spec,
            "package": package,
            "generation": generation,
            "kind": kind,
            "drain": drain,
            "release": release,
        }
    )


def _check_count(spec: ServiceSpec, target: ClusterTarget) -> None:
    """ValueError, in one line, if ``spec`` with ``target``'s count does not validate
    (autoscaling's bounds)."""
    try:
        ServiceSpec.model_validate({**spec.model_dump(), "instances": target.instances})
    except ValidationError as exc:
        first = exc.errors()[0]
        why = str(first["ctx"]["error"]) if first["type"] == "value_error" else first["msg"]
        raise ValueError(f"cluster {target.name}: {why}") from None


def cluster_body(plan: Plan, target: ClusterTarget) -> DeployBody:
    """The instruction for one cluster: the spec with that cluster's instance count."""
    return DeployBody.model_validate(
        {
            "spec": plan.cluster_spec(target),
            "package": plan.package,
            "kind": plan.kind,
            "generation": plan.generation,
        }
    )


def instruction_op_id(op: Operation, cluster: str) -> str:
    return f"{op.op_id}@{cluster}"


def decide(  # noqa: PLR0911 - one return per row of the table above
    op: Operation,
    last: Mapping[str, Instruction | None],
    states: Mapping[str, JobState | None],
) -> list[Decision]:
    """The next decisions for ``op``, given the last instruction sent to each target
    cluster and each target AppMaster's persisted state (None: no state yet)."""
    if op.status not in ACTIVE:
        return []  # finished operations are history: nothing more to decide
    targets = op.plan.clusters
    if op.step >= len(targets):
        return [Finish(OperationStatus.SUCCEEDED)]
    target = targets[op.step]
    cluster = target.name
    body = cluster_body(op.plan, target)
    op_id = instruction_op_id(op, cluster)
    sent = last.get(cluster)
    state = states.get(cluster)
    if op.plan.drain and len(targets) > 1 and state is not None:
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


def _next(op: Operation) -> list[Decision]:
    nxt = op.step + 1
    done: list[Decision] = [Advance(nxt)]
    if nxt >= len(op.plan.clusters):
        done.append(Finish(OperationStatus.SUCCEEDED))
    return done


def _drained_step(  # noqa: PLR0911 - one return per sub-step
    op: Operation, sent: Instruction | None, state: JobState, body: DeployBody
) -> list[Decision]:
    """One cluster's step with its traffic drained first: its weight goes to 0 (clients
    move to the other clusters), it is rolled, its weight comes back, then the next.
    The last instruction sent to the cluster says which of the three it is at; an
    update the cluster rejected gets its weight restored, then fails the operation."""
    cluster = op.plan.clusters[op.step].name
    update = instruction_op_id(op, cluster)
    drain, restore = f"{op.op_id}#drain@{cluster}", f"{op.op_id}#restore@{cluster}"
    at = sent.op_id if sent is not None else ""
    if at not in (drain, update, restore):
        return [Instruct(cluster, drain, TrafficBody(weight=0))]
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
            return [Instruct(cluster, restore, TrafficBody(weight=None))]
        return []
    if state.cluster_weight is not None:
        return []
    why = state.rejection(update)
    if why is not None:
        return [Finish(OperationStatus.FAILED, f"cluster {cluster} rejected {update}: {why}")]
    if state.rolled_back(update):
        return [Finish(OperationStatus.FAILED, f"cluster {cluster} rolled the release back")]
    return _next(op)


def converged(state: JobState, body: DeployBody) -> bool:
    """The AppMaster serves exactly ``body``'s revision on every instance, at the count
    the instruction asks for (or, autoscaled, the autoscaler's within its bounds):
    ``JobState.applied``."""
    spec = body.spec
    count = spec.scaled(state.autoscaled)
    return state.applied(spec.version, body.package, spec.config, count)
