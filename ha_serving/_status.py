"""The statuses of the control plane's long work, and the moves allowed between them.

Theory of operation
-------------------
Two state machines outlive any one process, so both are in the DB and both roles read
them: a Keeper *operation* (a row of ``operations``, written only by the leader's
reconciler, read by every replica, the CLI and the drills) and an AppMaster *rollout*
(``JobState.rollout`` in ``appmaster_state``, written by the AppMaster, read by the
leader to tell whether a cluster converged or rolled back). Both live here, below the
store, so the Keeper and the AppMaster share one vocabulary and neither reads the
other's state as free strings. Values are the strings already stored in rows and JSON:
never rename one (the DB outlives the code).

Every write of a status goes through ``check_move`` with its table: a move the table
does not allow raises ``IllegalTransition`` (a bug, never retried) instead of being
written. Finished statuses have no moves out: a finished operation or rollout is
history, never reopened.

Operation status (``OPERATION_TRANSITIONS``; ``Store.advance_operation`` enforces it):

===========  ===========================================  ==================================
from         to                                           when
===========  ===========================================  ==================================
pending      running                                      the leader sends its first
                                                          instruction (recorded before it)
pending      failed                                       refused before anything was sent
                                                          (a release's target cluster runs
                                                          no AppMaster yet)
pending      superseded                                   a newer operation of the service
running      running                                      a step done: next cluster/weight
running      succeeded                                    every cluster converged
running      failed                                       a cluster rejected an instruction
                                                          or rolled the revision back
running      aborted                                      the operator aborted a release
running      rolled_back                                  a release ended itself (failed
                                                          analysis, a candidate that could
                                                          not start)
running      superseded                                   a newer operation of the service
===========  ===========================================  ==================================

Rollout status (``ROLLOUT_TRANSITIONS``; ``appmaster._state.Rollout.to`` enforces it):

============  ============  =====================================================
from          to            when
============  ============  =====================================================
running       succeeded     every instance serves the new revision
running       rolling_back  ``failure_threshold`` instances failed it; or a failing
                            candidate's release was aborted
running       failed        it failed with nothing to roll back to
running       superseded    a newer instruction replaced it
rolling_back  rolled_back   every instance serves the old revision again
rolling_back  superseded    a newer instruction replaced it
============  ============  =====================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar

from ha_serving._errors import IllegalTransition


class OperationStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABORTED = "aborted"
    """A canary or blue-green release the operator aborted (its traffic went back)."""
    ROLLED_BACK = "rolled_back"
    """A release ended by its failing analysis (its traffic went back)."""
    SUPERSEDED = "superseded"


OPERATION_TRANSITIONS: dict[OperationStatus, frozenset[OperationStatus]] = {
    OperationStatus.PENDING: frozenset(
        {OperationStatus.RUNNING, OperationStatus.FAILED, OperationStatus.SUPERSEDED}
    ),
    OperationStatus.RUNNING: frozenset(
        {
            OperationStatus.RUNNING,
            OperationStatus.SUCCEEDED,
            OperationStatus.FAILED,
            OperationStatus.ABORTED,
            OperationStatus.ROLLED_BACK,
            OperationStatus.SUPERSEDED,
        }
    ),
    OperationStatus.SUCCEEDED: frozenset(),
    OperationStatus.FAILED: frozenset(),
    OperationStatus.ABORTED: frozenset(),
    OperationStatus.ROLLED_BACK: frozenset(),
    OperationStatus.SUPERSEDED: frozenset(),
}

ACTIVE: frozenset[OperationStatus] = frozenset({OperationStatus.PENDING, OperationStatus.RUNNING})
"""Operations not finished yet: the leader carries them out, an operator may command
them, pruning keeps them. The only answer to "is this op active?"."""


class RolloutStatus(StrEnum):
    RUNNING = "running"
    ROLLING_BACK = "rolling_back"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    SUPERSEDED = "superseded"


ROLLOUT_TRANSITIONS: dict[RolloutStatus, frozenset[RolloutStatus]] = {
    RolloutStatus.RUNNING: frozenset(
        {
            RolloutStatus.SUCCEEDED,
            RolloutStatus.ROLLING_BACK,
            RolloutStatus.FAILED,
            RolloutStatus.SUPERSEDED,
        }
    ),
    RolloutStatus.ROLLING_BACK: frozenset({RolloutStatus.ROLLED_BACK, RolloutStatus.SUPERSEDED}),
    RolloutStatus.SUCCEEDED: frozenset(),
    RolloutStatus.FAILED: frozenset(),
    RolloutStatus.ROLLED_BACK: frozenset(),
    RolloutStatus.SUPERSEDED: frozenset(),
}


class ReleaseMode(StrEnum):
    """How a release runs its candidate beside the stable revision."""

    CANARY = "canary"
    """Some stable instances are updated in place to the candidate."""
    BLUE_GREEN = "blue_green"
    """A full extra set of instances runs the candidate."""


RELEASE_MODES: tuple[str, ...] = tuple(m.value for m in ReleaseMode)
"""The modes as plain strings: for membership tests of untrusted input (an ``in`` on
the enum itself raises for a non-string on Python 3.11)."""


class RolloutKind(StrEnum):
    """What started an AppMaster's rollout."""

    DEPLOY = "deploy"
    CONFIG = "config"
    CODE = "code"
    SCALE = "scale"
    CANARY = "canary"
    BLUE_GREEN = "blue_green"
    PROMOTE = "promote"
    """A release's candidate made the stable revision."""
    ABORT = "abort"
    """A release's candidate sent back (nothing to roll back to)."""


S = TypeVar("S", bound=StrEnum)


def check_move(subject: str, table: Mapping[S, frozenset[S]], src: S, dst: str) -> S:
    """``dst`` as its status, if ``table`` allows ``src -> dst``; else
    ``IllegalTransition`` (also for a ``dst`` that is no status at all)."""
    for status in table[src]:
        if status == dst:
            return status
    raise IllegalTransition(subject, str(src), str(dst))
