"""Canary and blue-green releases, decided purely: traffic moves by weight in steps.

Both run the candidate revision beside the stable one on every target cluster at once
(each AppMaster keeps two version groups, see ``appmaster._state``) and move the
candidate's share of traffic through ``steps``; they differ in where the candidate runs:

- canary: ``instances`` of each cluster's stable instances are updated in place;
  steps like 5, 25, 50, 100 percent, each held ``pause_s`` while analysis runs;
- blue-green: a full extra set of instances (green) comes up beside blue; one step,
  100 percent (the switch), held for the rollback window ``pause_s``; blue stays warm
  until the window has passed, so a rollback is a traffic flip.

The operation's ``step`` is where it is; its ``progress`` holds what the step's timing
and the analysis need (and what ``release status`` shows); ``command`` is the operator's.

=====  =================================================  ============================
step   instructs every cluster                            moves on when
=====  =================================================  ============================
0      run the candidate, weight 0                        every cluster serves it
k      weight ``steps[k-1]``                              every cluster applied it and
                                                          ``pause_s`` passed (not paused)
end    promote (after the last step, or ``promote``) or   every cluster converged: the
       abort (``abort``, failed analysis, a cluster       op ends succeeded, aborted,
       that rolled the candidate back itself or           rolled_back or (a rejected
       rejected an instruction)                           instruction) failed
=====  =================================================  ============================

A target cluster the service does not run on yet (no AppMaster state) fails the operation
before anything is sent: its AppMaster could only reject the release.

A new leader reads the same row and decides again: instructions carry op-derived ids,
so nothing is applied twice, and the step's clock (``step_at``) is durable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from ha_serving._instructions import EndReleaseBody, ReleaseBody
from ha_serving._jobstate import JobState
from ha_serving._status import ACTIVE, RELEASE_MODES, OperationStatus, ReleaseMode
from ha_serving.keeper._analysis import AnalysisPolicy, Check
from ha_serving.keeper._plan import ClusterTarget, Operation, Plan, ReleasePlan, ReleaseProgress
from ha_serving.keeper._releases import (
    Advance,
    Decision,
    Finish,
    Instruct,
    Progress,
)
from ha_serving.store import Instruction

WEIGHTED = RELEASE_MODES
"""Operation kinds that are releases (``ha_serving._status.ReleaseMode``)."""
COMMANDS = ("promote", "pause", "resume", "abort")
MAX_CHECKS = 20
"""Analysis checks kept in an operation's progress (newest last)."""


def release_plan(
    mode: str,
    targets: tuple[ClusterTarget, ...],
    *,
    steps: list[int] | None,
    pause_s: float,
    canary_instances: int,
    analysis: AnalysisPolicy,
) -> ReleasePlan:
    """The ``release`` part of a weighted operation's plan; ValueError if it is wrong."""
    if mode not in WEIGHTED:
        raise ValueError(f"unknown release mode {mode!r}: one of {WEIGHTED}")
    if mode == "blue_green":
        steps = steps or [100]
    steps = steps or [10, 50, 100]
    if any(not 0 < w <= 100 for w in steps) or steps != sorted(set(steps)) or steps[-1] != 100:
        raise ValueError(f"steps must rise strictly within 1..100 and end at 100, got {steps}")
    if pause_s < 0:
        raise ValueError(f"pause must be >= 0 s, got {pause_s}")
    instances: dict[str, int] = {}
    for t in targets:
        if mode == "blue_green":
            instances[t.name] = t.instances
        elif not 1 <= canary_instances < t.instances:
            raise ValueError(
                f"cluster {t.name} has {t.instances} instances: a canary takes "
                f"1..{t.instances - 1} of them, not {canary_instances}"
            )
        else:
            instances[t.name] = canary_instances
    return ReleasePlan(
        mode=ReleaseMode(mode),
        steps=tuple(steps),
        pause_s=pause_s,
        instances=instances,
        analysis=analysis,
    )


def step_op_id(op: Operation, step: int | str, cluster: str) -> str:
    return f"{op.op_id}#{step}@{cluster}"


def release_body(op: Operation, cluster: str, weight: int) -> ReleaseBody:
    plan = op.plan
    release = plan.weighted()
    return ReleaseBody(
        op=op.op_id,
        mode=release.mode,
        spec=plan.cluster_spec(plan.target(cluster)),
        package=plan.package,
        instances=release.instances[cluster],
        weight=weight,
    )


def weight_at(op: Operation, step: int) -> int:
    steps = op.plan.weighted().steps
    return 0 if step == 0 else int(steps[min(step, len(steps)) - 1])


def decide_weighted(  # noqa: PLR0911, PLR0912 - one return per row of the module's table
    op: Operation,
    last: Mapping[str, Instruction | None],
    states: Mapping[str, JobState | None],
    now: float,
) -> list[Decision]:
    """The next decisions for a canary or blue-green operation (see the module's table)."""
    if op.status not in ACTIVE:
        return []
    release = op.plan.weighted()
    targets = [t.name for t in op.plan.clusters]
    progress = op.progress
    ending = progress.ending
    if ending is None:
        absent = [c for c in targets if states.get(c) is None]
        nothing_sent = progress == ReleaseProgress()
        if op.step == 0 and nothing_sent and absent:  # nothing to undo
            return [
                Finish(
                    OperationStatus.FAILED,
                    f"{op.service} does not run on cluster {absent[0]} yet: "
                    f"deploy it there before a {op.kind}",
                )
            ]
        reason = _why_end(op, last, states, targets)
        if reason is not None:
            kind, why, failed = reason
            # failed: the release is undone all the same, then the op fails
            ends = {"ending": kind, "reason": why, "failed": failed}
            return [Progress(progress.model_copy(update=ends))]
        # the step: its weight on every cluster, then its pause
        weight = weight_at(op, op.step)
        sends: list[Decision] = [
            Instruct(c, step_op_id(op, op.step, c), release_body(op, c, weight))
            for c in targets
            if _sent(last.get(c)) != step_op_id(op, op.step, c)
        ]
        if sends:
            weighed = Progress(progress.model_copy(update={"weight": weight}))
            return [*sends, weighed] if op.step == 0 else sends
        if not all(_ready(states.get(c), op.op_id, weight) for c in targets):
            return []
        if progress.step != op.step:  # it just took effect everywhere: start its clock
            started = {"step": op.step, "weight": weight, "step_at": now}
            return [Progress(progress.model_copy(update=started))]
        if op.command == "pause":
            return []  # held, even before the candidate's first traffic
        if op.step == 0:
            return [Advance(1)]
        if now - (progress.step_at or 0.0) < release.pause_s:
            return []
        if op.step >= len(release.steps):
            passed = {"ending": "promote", "reason": "every step passed"}
            return [Progress(progress.model_copy(update=passed))]
        return [Advance(op.step + 1)]

    # the end: promote or abort on every cluster, then wait for each to converge
    sends = [
        Instruct(c, step_op_id(op, ending, c), EndReleaseBody(kind=ending, op=op.op_id))
        for c in targets
        if _sent(last.get(c)) != step_op_id(op, ending, c)
    ]
    if sends:
        weight = 100 if ending == "promote" else 0
        return [*sends, Progress(progress.model_copy(update={"weight": weight}))]
    for c in targets:
        state = states.get(c)
        refused = state.rejection(step_op_id(op, ending, c)) if state is not None else None
        if refused is not None:
            return [
                Finish(
                    OperationStatus.FAILED,
                    f"cluster {c} rejected {step_op_id(op, ending, c)}: {refused}",
                )
            ]
    if ending == "promote":
        for c in targets:
            state = states.get(c)
            if state is not None and state.rolled_back(step_op_id(op, "promote", c)):
                return [Finish(OperationStatus.FAILED, f"cluster {c} rolled the promotion back")]
    candidate = _promoted(op.plan) if ending == "promote" else None
    if not all(_settled(states.get(c), op.op_id, candidate) for c in targets):
        return []
    if ending == "promote":
        return [Finish(OperationStatus.SUCCEEDED)]
    status = OperationStatus.ROLLED_BACK
    if progress.reason == OPERATOR_ABORT:
        status = OperationStatus.ABORTED
    if progress.failed:
        status = OperationStatus.FAILED
    return [Finish(status, progress.reason)]


OPERATOR_ABORT = "aborted by the operator"


def _why_end(
    op: Operation,
    last: Mapping[str, Instruction | None],
    states: Mapping[str, JobState | None],
    targets: list[str],
) -> tuple[Literal["promote", "abort"], str, bool] | None:
    """("promote"|"abort", why, failed) if the release must end now, else None;
    ``failed``: it ends because a cluster rejected one of its instructions."""
    if op.command == "abort":
        return "abort", OPERATOR_ABORT, False
    for c in targets:  # an instruction of this release the cluster cannot carry out
        sent, state = _sent(last.get(c)), states.get(c)
        if state is None or sent is None or not sent.startswith(f"{op.op_id}#"):
            continue
        why = state.rejection(sent)
        if why is not None:
            return "abort", f"cluster {c} rejected {sent}: {why}", True
    policy = op.plan.weighted().analysis
    failed = op.progress.failed_checks
    if failed >= policy.max_failed_checks:
        why = f"analysis failed {failed} checks, last: {op.progress.last_failure}"
        return "abort", why, False
    for c in targets:
        state = states.get(c)
        if state is not None and state.rolled_back(step_op_id(op, 0, c)):
            return "abort", f"the candidate failed to start on cluster {c}", False
    if op.command == "promote" and op.step >= 1:
        return "promote", "promoted by the operator", False
    return None


def add_check(progress: ReleaseProgress, check: Check) -> ReleaseProgress:
    """``progress`` with one more analysis check: the newest MAX_CHECKS are kept, and
    failed ones are counted apart, since that count decides the rollback."""
    update: dict[str, Any] = {"checks": (*progress.checks, check)[-MAX_CHECKS:]}
    if check.verdict == "fail":
        update.update(failed_checks=progress.failed_checks + 1, last_failure=check.reason)
    return progress.model_copy(update=update)


def _sent(instruction: Instruction | None) -> str | None:
    return instruction.op_id if instruction is not None else None


def _ready(state: JobState | None, op_id: str, weight: int) -> bool:
    """``JobState.release_ready`` of a cluster whose state may be missing (not ready)."""
    return state is not None and state.release_ready(op_id, weight)


def _promoted(plan: Plan) -> tuple[str, str, dict[str, Any]]:
    """The (version, package, config) a promotion of ``plan`` makes ``desired``."""
    return plan.spec.version, plan.package, plan.spec.config


def _settled(
    state: JobState | None, op_id: str, promoted: tuple[str, str, dict[str, Any]] | None
) -> bool:
    """``JobState.release_settled`` of a cluster whose state may be missing (not yet)."""
    return state is not None and state.release_settled(op_id, promoted)
