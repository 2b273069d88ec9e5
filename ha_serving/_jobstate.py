"""The AppMaster's durable state and the lifecycles of the instances and proxies it owns.

It sits below the roles (``ha_serving.appmaster`` re-exports it) because two of them read
it: the AppMaster writes and acts on it, and the Keeper reads the persisted record with
``JobState.from_record`` to decide when a cluster has converged or a release step has
taken effect. So every "is it done?" rule (``JobState.converged``, ``applied``,
``release_ready``, ``release_settled``, ``rejection``, ``rolled_back``) lives here, once.

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

Instance lifecycle (``Instance.to`` moves by ``TRANSITIONS`` through
``ha_serving._status.check_move``, as every status does: an illegal transition raises
``IllegalTransition``):

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

Proxy lifecycle
---------------
A proxy is recorded before its actor is created, so an AppMaster that dies right after
creating it still knows it owns it. A proxy the spec no longer asks for (``proxies``
lowered) leaves without failing a call: its discovery endpoint is withdrawn first and it
keeps serving (and receiving routing tables) until ``stop_at``, while clients' discovery
moves them to the other proxies; then it is stopped (health NOT_SERVING, late calls get a
retry-safe UNAVAILABLE, in-flight ones finish within the drain timeout), killed, and its
record deleted. Only ``serving`` proxies that the spec asks for are published.
``Proxy.to`` moves by ``PROXY_TRANSITIONS``, through ``check_move`` too.

=========  ================  =====================================================
from       to                when
=========  ================  =====================================================
starting   serving           it answered ``start()``; its address is published
starting   stopping          no longer wanted before it served (never published)
serving    serving           Ray restarted it at a new address (re-published)
serving    withdrawn         no longer wanted: its endpoint left discovery
withdrawn  serving           wanted again before it was stopped
withdrawn  stopping          ``stop_at`` passed
stopping   (record deleted)  stopped, drained and killed
=========  ================  =====================================================

Version groups (canary, blue-green)
-----------------------------------
A ``Release`` runs a *candidate* revision beside ``desired`` (the stable one). Each
instance belongs to a group; the routing table gives the proxies each group's share of
traffic (``Release.weight`` percent to the candidate), so the split is by weight, not by
instance count.

==========  ================================================  ==========================
group       runs                                              traffic
==========  ================================================  ==========================
stable      ``desired``                                       100 - weight
candidate   the release's candidate (``desired`` once the     weight (0 once the release
            release ended: a rolled-back canary instance)     ended)
retiring    whatever it ran; removed first when surplus       none (spill-over only)
==========  ================================================  ==========================

Canary takes ``Release.instances`` of the stable instances and updates them in place to
the candidate; blue-green adds that many *extra* instances (new workers) for it. Ending a
release (``end_release``): promote makes the candidate ``desired`` (canary: the others
roll to it in place; blue-green: the old instances retire), abort sends the candidate's
traffic back at once (canary: its instances roll back in place; blue-green: they retire).
"""

from __future__ import annotations

import time
from enum import Enum, StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from ha_serving._spec import Revision, ServiceSpec
from ha_serving._status import (
    ROLLOUT_TRANSITIONS,
    ReleaseMode,
    RolloutKind,
    RolloutStatus,
    check_move,
)


class Phase(StrEnum):
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


class Group(str, Enum):
    STABLE = "stable"
    CANDIDATE = "candidate"
    RETIRING = "retiring"


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
    group: Group = Group.STABLE
    """Version group (see the module's table)."""

    def to(self, phase: Phase, **changes: Any) -> Instance:
        moved = check_move(f"instance {self.id}", TRANSITIONS, self.phase, phase)
        return self.model_copy(update={"phase": moved, **changes})


class ProxyPhase(StrEnum):
    STARTING = "starting"
    SERVING = "serving"
    WITHDRAWN = "withdrawn"
    STOPPING = "stopping"


PROXY_TRANSITIONS: dict[ProxyPhase, frozenset[ProxyPhase]] = {
    ProxyPhase.STARTING: frozenset({ProxyPhase.SERVING, ProxyPhase.STOPPING}),
    ProxyPhase.SERVING: frozenset({ProxyPhase.SERVING, ProxyPhase.WITHDRAWN}),
    ProxyPhase.WITHDRAWN: frozenset({ProxyPhase.SERVING, ProxyPhase.STOPPING}),
    ProxyPhase.STOPPING: frozenset(),
}


class Proxy(_Frozen):
    name: str
    address: str | None = None
    metrics_address: str | None = None
    phase: ProxyPhase = ProxyPhase.SERVING
    """Lifecycle phase (see the module's table); records saved before proxies had phases
    were all of serving proxies, hence the default."""
    stop_at: float = 0.0
    """A withdrawn proxy is stopped no sooner than this (epoch seconds)."""

    def to(self, phase: ProxyPhase, **changes: Any) -> Proxy:
        moved = check_move(f"proxy {self.name}", PROXY_TRANSITIONS, self.phase, phase)
        return self.model_copy(update={"phase": moved, **changes})


class Rollout(_Frozen):
    op_id: str
    kind: RolloutKind
    from_rev: Revision | None
    to_rev: Revision
    status: RolloutStatus = RolloutStatus.RUNNING
    """Moves by ``ha_serving._status.ROLLOUT_TRANSITIONS`` (``to``)."""
    failures: int = 0
    started_at: float
    finished_at: float | None = None

    def to(self, status: RolloutStatus, **changes: Any) -> Rollout:
        moved = check_move(f"rollout {self.op_id}", ROLLOUT_TRANSITIONS, self.status, status)
        return self.model_copy(update={"status": moved, **changes})


class Release(_Frozen):
    """A candidate revision served beside ``desired`` (canary or blue-green)."""

    op_id: str
    """The Keeper operation driving it."""
    mode: ReleaseMode
    candidate: Revision
    spec: ServiceSpec
    """The candidate's spec; ``desired``'s spec becomes it on promote."""
    instances: int
    weight: int = 0
    """Percent of this cluster's traffic sent to the candidate group (0..100)."""


class AutoscaleChange(_Frozen):
    """One decision of the autoscaler that changed the count (also an ``autoscale``
    event in the store)."""

    at: float
    """Epoch seconds."""
    current: int
    desired: int
    mode: str
    """stable, panic, latency, forecast or bounds (see ``_autoscale.py``)."""
    reason: str


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
    """Id of the last Keeper instruction consumed (applied, duplicate, refused or
    rejected): the link resumes after it."""
    rejected: dict[str, str] = {}
    """Recent instructions this AppMaster could not carry out: op_id -> the reason, in
    one line (bounded). The leader reads it to end the operation as failed."""
    release: Release | None = None
    """A canary or blue-green release in progress."""
    ended_releases: dict[str, str] = {}
    """Recent releases that ended here: the Keeper operation -> "promoted" or "aborted"
    (bounded). An instruction to end one again is judged by it: an abort of a release
    this AppMaster already aborted (a failing candidate) is in effect; anything else
    aimed at a release that is not running is rejected, never recorded as applied."""
    retired_workers: tuple[str, ...] = ()
    """Worker actors this AppMaster stopped (newest last, bounded): their names are never
    used again, since proxies cache actor handles by name and a call on the dead actor's
    handle fails after it may have started (it could not be retried)."""
    cluster_weight: int | None = None
    """The Keeper's override of this cluster's traffic weight (None: the placement's),
    e.g. 0 while the cluster is drained before it is rolled."""
    autoscaled: int | None = None
    """The count the autoscaler decided last (None: the spec's ``instances``); read
    within the spec's current bounds (``ServiceSpec.scaled``), and reset when an
    operator's scale changes ``instances``."""
    autoscale: AutoscaleChange | None = None
    """The autoscaler's last change of the count, with its reason."""
    autoscale_demand: int | None = None
    """The count this cluster's own figures asked for last, before the Keeper's floor
    (None: none decided yet): the Keeper reads it as this cluster's demand
    (``keeper/_capacity.py:floors``), never the floor-raised count, which would ratchet."""

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

    def with_proxy(self, proxy: Proxy) -> JobState:
        return self._with_proxies({**self.proxies, proxy.name: proxy})

    def without_proxy(self, name: str) -> JobState:
        return self._with_proxies({k: v for k, v in self.proxies.items() if k != name})

    def _with_proxies(self, proxies: dict[str, Proxy]) -> JobState:
        """Each serving proxy's routing table carries its share of the instances'
        concurrency (``concurrency_per_proxy``): a change of their number is a new table."""
        bump = _serving(proxies) != _serving(self.proxies)
        return self.model_copy(
            update={"proxies": proxies, "routes_version": self.routes_version + int(bump)}
        )

    def concurrency_per_proxy(self) -> int:
        """An instance's ``max_concurrency``, shared among the proxies clients are sent to
        (each enforces its own cap). A withdrawn proxy is not counted: the others take
        its clients at once, and its own calls are draining away."""
        return max(1, self.spec.max_concurrency // max(1, _serving(self.proxies)))

    def target(self, inst: Instance) -> Revision:
        """The revision ``inst`` should run: its group's."""
        if inst.group == Group.CANDIDATE and self.release is not None:
            return self.release.candidate
        if inst.group == Group.RETIRING and inst.running is not None:
            return inst.running  # about to be removed: never updated
        return self.desired

    def wanted(self) -> int:
        """Instances this job should have: the spec's (or the autoscaler's), plus
        blue-green's extra ones."""
        r = self.release
        extra = r.instances if r is not None and r.mode == ReleaseMode.BLUE_GREEN else 0
        return self.spec.scaled(self.autoscaled) + extra

    def in_group(self, group: Group) -> list[Instance]:
        return [i for i in self.instances.values() if i.group == group and i.purpose != "remove"]

    def serving(self) -> list[Instance]:
        return sorted(
            (i for i in self.instances.values() if i.phase == Phase.SERVING),
            key=lambda i: i.index,
        )

    # --- "is it done?": the one implementation of each, read by AppMaster and Keeper ---

    def proxy_names(self) -> list[str]:
        """The proxies the spec asks for, by name."""
        return [f"{self.service}-p{k}" for k in range(self.spec.proxies)]

    def proxies_converged(self) -> bool:
        """Exactly the proxies the spec names are recorded, all serving."""
        return set(self.proxies) == set(self.proxy_names()) and all(
            p.phase == ProxyPhase.SERVING for p in self.proxies.values()
        )

    def converged(self) -> bool:
        """Every instance serves its group's revision, with the wanted count of each group,
        on workers with the current resources, behind exactly the wanted proxies."""
        r = self.release
        return (
            all(
                i.phase == Phase.SERVING
                and i.running is not None
                and i.running.key == self.target(i).key
                and i.group != Group.RETIRING
                for i in self.instances.values()
            )
            and len(self.instances) == self.wanted()
            and (r is None or len(self.in_group(Group.CANDIDATE)) == r.instances)
            and all(k == self.placement_key for k in self.workers.values())
            and self.proxies_converged()
        )

    def routed(self) -> bool:
        """Every live proxy acknowledged the latest routing table (the AppMaster saving a
        change is not yet calls following it)."""
        return self.routes_acked >= self.routes_version

    def runs(self, version: str, package: str, config: dict[str, Any]) -> bool:
        """``desired`` is that version of that package with that config."""
        d = self.desired
        return (d.version, d.package, d.config) == (version, package, config)

    def applied(self, version: str, package: str, config: dict[str, Any], count: int) -> bool:
        """A rollout to that revision with ``count`` instances is done here: no rollout or
        release open, ``desired`` is it, ``count`` instances, and ``converged``."""
        return (
            self.rollout is None
            and self.release is None
            and self.runs(version, package, config)
            and len(self.instances) == count
            and self.converged()
        )

    def release_ready(self, op_id: str, weight: int) -> bool:
        """Release ``op_id`` runs here at ``weight``, its candidate on all its candidate
        instances, and the proxies route that way."""
        r = self.release
        if not self.routed() or r is None or r.op_id != op_id or r.weight != weight:
            return False
        candidates = [i for i in self.instances.values() if i.group == Group.CANDIDATE]
        return len(candidates) == r.instances and all(
            i.phase == Phase.SERVING and i.running == r.candidate for i in candidates
        )

    def release_settled(self, op_id: str, promoted: tuple[str, str, dict[str, Any]] | None) -> bool:
        """Release ``op_id`` has ended here and every instance serves ``desired`` in the
        stable group, routed that way: the promoted (version, package, config), or after
        an abort (``promoted`` None) the old revision."""
        if not self.routed() or (self.release is not None and self.release.op_id == op_id):
            return False
        if promoted is not None and not self.runs(*promoted):
            return False
        return (
            self.rollout is None
            and all(i.group == Group.STABLE for i in self.instances.values())
            and self.converged()
        )

    def rejection(self, op_id: str) -> str | None:
        """Why this AppMaster rejected instruction ``op_id`` (one it cannot carry out), or
        None if it did not."""
        return self.rejected.get(op_id)

    def rolled_back(self, op_id: str) -> bool:
        """This AppMaster rolled back the rollout that instruction ``op_id`` started."""
        return any(r.op_id == op_id and r.status == RolloutStatus.ROLLED_BACK for r in self.history)

    def to_record(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> JobState:
        return cls.model_validate(_upgrade(record))


def _serving(proxies: dict[str, Proxy]) -> int:
    return sum(p.phase == ProxyPhase.SERVING for p in proxies.values())


def _upgrade(record: dict[str, Any]) -> dict[str, Any]:
    """Read states saved by earlier versions of this module (the DB outlives the code):
    ``workers`` was a list of names before placement keys were recorded; such workers
    were created with the resources of the spec they were saved with."""
    workers = record.get("workers")
    if isinstance(workers, list):
        resources = ServiceSpec.model_validate(record["spec"]).resources.model_dump_json()
        record = {**record, "workers": dict.fromkeys(workers, resources)}
    return record


def end_release(state: JobState, *, promote: bool) -> JobState:
    """End the running release: promote its candidate to ``desired``, or abort it.

    Either way the candidate's traffic share is settled at once (the caller bumps the
    routing table): promoted candidate instances join the stable group; aborted ones
    get no traffic and roll back in place (canary) or retire (blue-green)."""
    r = state.release
    if r is None:
        return state
    blue_green = r.mode == ReleaseMode.BLUE_GREEN
    instances = dict(state.instances)
    for key, inst in state.instances.items():
        if promote:
            if inst.group == Group.CANDIDATE:
                instances[key] = inst.model_copy(update={"group": Group.STABLE})
            elif blue_green and inst.group == Group.STABLE:
                instances[key] = inst.model_copy(update={"group": Group.RETIRING})
        elif blue_green and inst.group == Group.CANDIDATE:
            instances[key] = inst.model_copy(update={"group": Group.RETIRING})
    ended = {**state.ended_releases, r.op_id: "promoted" if promote else "aborted"}
    changes: dict[str, Any] = {
        "release": None,
        "instances": instances,
        "ended_releases": dict(list(ended.items())[-MAX_ENDED_RELEASES:]),
    }
    if promote:
        changes["desired"] = r.candidate
        changes["spec"] = r.spec.model_copy(update={"instances": state.spec.instances})
    return state.model_copy(update=changes)


MAX_HISTORY = 20
MAX_ENDED_RELEASES = 20
MAX_APPLIED_OPS = 200
MAX_RETIRED_WORKERS = 1000


def finish_rollout(state: JobState, status: RolloutStatus, now: float | None = None) -> JobState:
    """Close the running rollout with ``status`` (``IllegalTransition`` if its table does
    not allow it) and move it to the bounded history; no rollout, nothing to close."""
    if state.rollout is None:
        return state
    done = state.rollout.to(status, finished_at=now if now is not None else time.time())
    return state.model_copy(
        update={"rollout": None, "history": (*state.history, done)[-MAX_HISTORY:]}
    )
