"""The AppMaster's durable state and the instance lifecycle state machine.

Theory of operation
-------------------
An AppMaster owns one service on one cluster. Everything it knows lives in one
``JobState`` value, saved to the DB (``appmaster_state``, compare-and-set on its version)
*before* the AppMaster acts on it, so a restarted AppMaster reloads it and carries on.
The state names actors (workers, proxies), never holds Ray handles.

Updates are level-triggered: ``desired`` is the service-wide revision; each instance
records the revision it ``running``. The planner moves instances towards ``desired`` at
most ``max_unavailable`` at a time; a rollback is just ``desired`` set back to the
rollout's ``from_rev``.

Instance lifecycle (an illegal transition raises ``IllegalTransition``):

===========  =====================================  ===================================
from         to                                     when
===========  =====================================  ===================================
pending      serving, failed, removing              loaded and healthy / not; scaled away
serving      draining                               chosen for update or removal
serving      pending                                its worker lost it (restart, death)
draining     updating, removing, pending            idle (or drain timeout); or lost, or
                                                    its worker is replaced
updating     serving, failed, pending               health after update; or lost
failed       draining, pending                      retried (update/remove); or lost
removing     (record deleted)                       removed from its worker
===========  =====================================  ===================================

Only ``serving`` instances are in the routing table. An instance enters ``draining``
first (table without it pushed to every proxy), so it is out of routing before it is
touched, and returns to routing only after its health check passed.

A change of resources or runtime env cannot be applied in place: the worker actor is
replaced, one worker at a time. All its instances are drained (purpose "replace"), the
worker is killed and created again with the new options, and its instances load anew.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict

from ha_serving._errors import HAServingError
from ha_serving._spec import Revision, ServiceSpec


class IllegalTransition(HAServingError):
    def __init__(self, instance_id: str, src: str, dst: str) -> None:
        self.instance_id = instance_id
        self.src = src
        self.dst = dst
        super().__init__(f"instance {instance_id}: illegal transition {src} -> {dst}")


class Phase(str, Enum):
    PENDING = "pending"
    SERVING = "serving"
    DRAINING = "draining"
    UPDATING = "updating"
    FAILED = "failed"
    REMOVING = "removing"


TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.PENDING: frozenset({Phase.SERVING, Phase.FAILED, Phase.REMOVING}),
    Phase.SERVING: frozenset({Phase.DRAINING, Phase.PENDING}),
    Phase.DRAINING: frozenset({Phase.UPDATING, Phase.REMOVING, Phase.PENDING}),
    Phase.UPDATING: frozenset({Phase.SERVING, Phase.FAILED, Phase.PENDING}),
    Phase.FAILED: frozenset({Phase.DRAINING, Phase.PENDING}),
    Phase.REMOVING: frozenset(),
}

OUT_OF_SERVICE = frozenset({Phase.DRAINING, Phase.UPDATING, Phase.FAILED})
"""Phases that count against ``max_unavailable`` (pending ones were never in service)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Instance(_Frozen):
    id: str
    worker: str
    index: int
    """Position in the service (0..instances-1); scale-down removes the highest."""
    phase: Phase = Phase.PENDING
    running: Revision | None = None
    """What the worker has loaded; None before the first load or after a loss."""
    drained_at_routes: int = 0
    """Routing-table version that first excluded this instance; it may be touched once
    every proxy acknowledged that version."""
    purpose: str = ""
    """Why it is draining: "update" or "remove"."""
    retry_at: float = 0.0
    """A failed instance is retried no sooner than this (epoch seconds)."""

    def to(self, phase: Phase, **changes: Any) -> Instance:
        if phase not in TRANSITIONS[self.phase]:
            raise IllegalTransition(self.id, self.phase.value, phase.value)
        return self.model_copy(update={"phase": phase, **changes})


class Proxy(_Frozen):
    name: str
    address: str | None = None
    metrics_address: str | None = None


class Rollout(_Frozen):
    op_id: str
    kind: str
    """"config", "code", "deploy" or "scale"."""
    from_rev: Revision | None
    to_rev: Revision
    status: str = "running"
    """running -> succeeded | rolling_back -> rolled_back."""
    failures: int = 0
    started_at: float
    finished_at: float | None = None


class JobState(_Frozen):
    """Everything the AppMaster of one service on one cluster knows, persisted."""

    service: str
    cluster: str
    spec: ServiceSpec
    desired: Revision
    instances: dict[str, Instance] = {}
    proxies: dict[str, Proxy] = {}
    workers: dict[str, str] = {}
    """Worker actors this AppMaster created and has not stopped (some may be empty), each
    with the ``placement_key`` of the resources it was created with."""
    routes_version: int = 0
    """Bumped whenever the set of serving instances changes."""
    routes_acked: int = 0
    """Highest routes_version every live proxy acknowledged."""
    rollout: Rollout | None = None
    history: tuple[Rollout, ...] = ()
    """Finished rollouts, newest last (bounded)."""
    highest_epoch: int = 0
    """Highest Keeper epoch seen; instructions below it are refused (fencing)."""
    applied_ops: tuple[str, ...] = ()
    """Recent op_ids applied, so a repeated instruction is ignored (bounded)."""
    last_instruction: int = 0
    """Id of the last Keeper instruction consumed (applied, duplicate or refused): the
    link resumes after it."""

    @property
    def placement_key(self) -> str:
        """Fingerprint of what a worker actor is created with (resources, runtime env):
        when it changes, workers are replaced; everything else is updated in place."""
        return self.spec.resources.model_dump_json()

    def with_instance(self, inst: Instance) -> JobState:
        return self.model_copy(update={"instances": {**self.instances, inst.id: inst}})

    def without_instance(self, instance_id: str) -> JobState:
        rest = {k: v for k, v in self.instances.items() if k != instance_id}
        return self.model_copy(update={"instances": rest})

    def serving(self) -> list[Instance]:
        return sorted(
            (i for i in self.instances.values() if i.phase == Phase.SERVING),
            key=lambda i: i.index,
        )

    def to_record(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> JobState:
        return cls.model_validate(_upgrade(record))


def _upgrade(record: dict[str, Any]) -> dict[str, Any]:
    """Read states saved by earlier versions of this module (the DB outlives the code):
    ``workers`` was a list of names before placement keys were recorded; such workers
    were created with the resources of the spec they were saved with."""
    workers = record.get("workers")
    if isinstance(workers, list):
        resources = ServiceSpec.model_validate(record["spec"]).resources.model_dump_json()
        record = {**record, "workers": dict.fromkeys(workers, resources)}
    return record


MAX_HISTORY = 20
MAX_APPLIED_OPS = 200


def finish_rollout(state: JobState, status: str, now: float | None = None) -> JobState:
    """Close the running rollout with ``status`` and move it to the bounded history."""
    if state.rollout is None:
        return state
    done = state.rollout.model_copy(
        update={"status": status, "finished_at": now if now is not None else time.time()}
    )
    return state.model_copy(
        update={"rollout": None, "history": (*state.history, done)[-MAX_HISTORY:]}
    )
