"""Decide purely: ``plan(state, observed, now) -> list[Action]``.

The planner compares what the state says should be (desired revision, instance count,
proxies) with what the runtime shows (live workers and what they host, live proxies and
the routing table each holds) and returns the next actions: what is missing is started;
what the spec no longer asks for (instances, workers, proxies) is drained and stopped.
It never does I/O; the executor applies the actions and persists every state change
before its side effect.
Called again after every round, it is level-triggered: a restarted AppMaster, or one
whose last round half-failed, simply plans again from the persisted state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ha_serving._spec import Revision
from ha_serving._status import RolloutStatus
from ha_serving.appmaster._state import (
    OUT_OF_SERVICE,
    Group,
    Instance,
    JobState,
    Phase,
    ProxyPhase,
)


@dataclass(frozen=True)
class WorkerView:
    """A live worker actor and the ids of the instances it hosts."""

    hosted: frozenset[str]
    caps: Mapping[str, int | None] = field(default_factory=dict)
    """The ``max_concurrency`` each hosted instance enforces (None: no cap); a worker of
    older code, which enforces none and cannot be told one, reports none."""


@dataclass(frozen=True)
class ProxyView:
    routes_version: int
    address: str | None


@dataclass(frozen=True)
class Observed:
    workers: dict[str, WorkerView | None] = field(default_factory=dict)
    """Every worker the state names: its view, or None if it is dead/unreachable."""
    proxies: dict[str, ProxyView | None] = field(default_factory=dict)
    """Every proxy the spec names or the state records: its view, or None if dead."""
    unhealthy: frozenset[str] = frozenset()
    """Serving instances whose periodic health check failed."""


# --- actions --------------------------------------------------------------------------


@dataclass(frozen=True)
class StartProxy:
    name: str


@dataclass(frozen=True)
class WithdrawProxy:
    """Take a proxy the spec no longer asks for out of discovery (it keeps serving)."""

    name: str
    addresses: tuple[str, ...]
    """Its recorded and its observed address (they differ if Ray restarted it)."""


@dataclass(frozen=True)
class StopProxy:
    """Stop a withdrawn proxy (drains its in-flight calls), kill it and forget it."""

    name: str


@dataclass(frozen=True)
class StartWorker:
    name: str


@dataclass(frozen=True)
class StopWorker:
    name: str


@dataclass(frozen=True)
class CreateInstances:
    instances: tuple[Instance, ...]


@dataclass(frozen=True)
class MarkLost:
    ids: tuple[str, ...]


@dataclass(frozen=True)
class Assign:
    """Move serving instances to a version group (a canary takes stable ones)."""

    ids: tuple[str, ...]
    group: Group


@dataclass(frozen=True)
class Load:
    id: str
    revision: Revision


@dataclass(frozen=True)
class Drain:
    ids: tuple[str, ...]
    purpose: str  # "update" | "remove"


@dataclass(frozen=True)
class Apply:
    id: str
    revision: Revision


@dataclass(frozen=True)
class Remove:
    id: str


@dataclass(frozen=True)
class ReplaceWorker:
    """Kill a drained worker and let it be created again with the current resources."""

    name: str


@dataclass(frozen=True)
class PushRoutes:
    version: int


@dataclass(frozen=True)
class FinishRollout:
    status: RolloutStatus


@dataclass(frozen=True)
class RollBack:
    pass


Action = (
    StartProxy
    | WithdrawProxy
    | StopProxy
    | StartWorker
    | StopWorker
    | CreateInstances
    | Assign
    | MarkLost
    | Load
    | Drain
    | Apply
    | Remove
    | ReplaceWorker
    | PushRoutes
    | FinishRollout
    | RollBack
)


def proxy_names(state: JobState) -> list[str]:
    return state.proxy_names()


def worker_name(state: JobState, index: int) -> str:
    """The worker hosting instance ``index``: its slot's current worker, if it has one,
    else a name no stopped worker had (see ``JobState.retired_workers``)."""
    per = state.spec.instances_per_worker
    for inst in state.instances.values():
        if inst.index // per == index // per:
            return inst.worker
    name = f"{state.service}-w{index // per}"
    while name in state.retired_workers:
        name = successor(name)
    return name


def successor(worker: str) -> str:
    """The name of a replacement worker. A fresh name, never the dead one's: proxies
    cache actor handles by name, and a call on a stale handle could not be retried."""
    base, sep, gen = worker.rpartition("-r")
    if sep and gen.isdigit():
        return f"{base}-r{int(gen) + 1}"
    return f"{worker}-r1"


def plan(state: JobState, observed: Observed, now: float) -> list[Action]:
    """The next actions, in the order the executor should apply them."""
    actions: list[Action] = []

    # 1. proxies: every named proxy runs (a restarted one re-publishes its address);
    #    the others leave discovery, then stop
    actions += _proxies(state, observed, now)

    # 2. instances the runtime lost (worker died or restarted empty) start over
    lost = tuple(
        i.id
        for i in state.instances.values()
        if i.phase not in {Phase.PENDING, Phase.REMOVING} and _lost(i, observed)
    )
    if lost:
        actions.append(MarkLost(lost))

    # 3. instance count follows the spec (and the release's groups)
    scale = _scale(state)
    actions += scale
    actions += _assign(state)

    # 4. workers that host instances (or are about to) must run; empty ones stop
    needed = {i.worker for i in state.instances.values()} | {
        i.worker for a in scale if isinstance(a, CreateInstances) for i in a.instances
    }
    actions += [StartWorker(n) for n in sorted(needed) if observed.workers.get(n) is None]
    # (a dead one too: it is forgotten, or it would be observed, and counted as stale
    # by converged(), forever)
    actions += [StopWorker(w) for w in observed.workers if w not in needed]
    actions += _replace(state, observed, lost)

    # 5. pending instances load the desired revision once their worker runs
    for inst in _by_index(state, Phase.PENDING):
        if inst.id not in lost and observed.workers.get(inst.worker) is not None:
            actions.append(Load(inst.id, state.target(inst)))

    # 6. rollout / rollback bookkeeping, then the rolling update itself
    actions += _rollout(state)
    actions += _roll(state, observed, now, lost)

    # 7. every live proxy holds the current routing table
    if any(
        v is not None and v.routes_version < state.routes_version for v in observed.proxies.values()
    ):
        actions.append(PushRoutes(state.routes_version))
    return actions


def _proxies(state: JobState, observed: Observed, now: float) -> list[Action]:
    """Wanted proxies run and are recorded serving at their current address; unwanted
    ones are withdrawn from discovery, and stopped once ``stop_at`` has passed."""
    actions: list[Action] = []
    wanted = proxy_names(state)
    for name in wanted:
        view, known = observed.proxies.get(name), state.proxies.get(name)
        if known is not None and known.phase == ProxyPhase.STOPPING:
            actions.append(StopProxy(name))  # cannot be taken back: started anew once gone
        elif (
            view is None
            or known is None
            or known.phase != ProxyPhase.SERVING
            or view.address != known.address
        ):
            actions.append(StartProxy(name))
    for name in sorted(set(state.proxies) - set(wanted)):
        known = state.proxies[name]
        if known.phase == ProxyPhase.SERVING:
            view = observed.proxies.get(name)
            found = {known.address, view.address if view is not None else None}
            actions.append(WithdrawProxy(name, tuple(sorted(a for a in found if a))))
        elif known.phase != ProxyPhase.WITHDRAWN or known.stop_at <= now:
            actions.append(StopProxy(name))  # starting ones were never published
    return actions


def proxies_converged(state: JobState) -> bool:
    """``JobState.proxies_converged`` (kept here: the planner's callers import it)."""
    return state.proxies_converged()


def _replace(state: JobState, observed: Observed, lost: tuple[str, ...]) -> list[Action]:
    """Workers created with other resources than the spec's are replaced, one at a time,
    and only while no other instance is out of service."""
    key = state.placement_key
    stale = sorted(w for w, k in state.workers.items() if k != key and observed.workers.get(w))
    if not stale:
        return []
    name = stale[0]
    mine = [i for i in state.instances.values() if i.worker == name]
    if mine and all(
        i.phase == Phase.DRAINING
        and i.purpose == "replace"
        and i.drained_at_routes <= state.routes_acked
        for i in mine
    ):
        return [ReplaceWorker(name)]
    busy = any(i.phase != Phase.SERVING for i in state.instances.values())
    if not mine:
        return [ReplaceWorker(name)]
    serving = tuple(i.id for i in mine if i.phase == Phase.SERVING and i.id not in lost)
    if not busy and len(serving) == len(mine):
        return [Drain(serving, "replace")]
    return []


def _lost(inst: Instance, observed: Observed) -> bool:
    view = observed.workers.get(inst.worker)
    return view is None or inst.id not in view.hosted


def _by_index(state: JobState, phase: Phase) -> list[Instance]:
    return sorted((i for i in state.instances.values() if i.phase == phase), key=lambda i: i.index)


def _scale(state: JobState) -> list[Action]:
    live = [i for i in state.instances.values() if i.purpose != "remove"]
    want = state.wanted()
    r = state.release
    if len(live) < want:
        # blue-green's extra instances are the candidate's; everything else is stable
        short = 0
        if r is not None and r.mode == "blue_green":
            short = r.instances - len(state.in_group(Group.CANDIDATE))
        used = {i.index for i in state.instances.values()}
        new: list[Instance] = []
        index = 0
        while len(live) + len(new) < want:
            if index not in used:
                group = Group.CANDIDATE if len(new) < short else Group.STABLE
                inst_id = f"{state.service}-{index}"
                worker = worker_name(state, index)
                new.append(Instance(id=inst_id, worker=worker, index=index, group=group))
            index += 1
        return [CreateInstances(tuple(new))]
    # retiring instances go first, then the highest indices
    surplus = sorted(live, key=lambda i: (i.group != Group.RETIRING, -i.index))[
        : max(len(live) - want, 0)
    ]
    actions: list[Action] = []
    drain = tuple(i.id for i in surplus if i.phase in (Phase.SERVING, Phase.FAILED))
    if drain:
        actions.append(Drain(drain, "remove"))
    # pending ones never served: nothing to drain
    actions += [Remove(i.id) for i in surplus if i.phase == Phase.PENDING]
    return actions


def _assign(state: JobState) -> list[Action]:
    """A canary takes its candidate instances from the stable ones (highest index first)."""
    r = state.release
    if r is None or r.mode != "canary":
        return []
    short = r.instances - len(state.in_group(Group.CANDIDATE))
    if short <= 0:
        return []
    stable = [i for i in state.serving() if i.group == Group.STABLE]
    chosen = tuple(i.id for i in reversed(stable))[:short]
    return [Assign(chosen, Group.CANDIDATE)] if chosen else []


def _rollout(state: JobState) -> list[Action]:
    r = state.rollout
    if r is None:
        return []
    running = r.status == RolloutStatus.RUNNING
    if running and r.failures >= state.spec.rollout.failure_threshold:
        return [RollBack()]
    if converged(state):
        done = RolloutStatus.SUCCEEDED if running else RolloutStatus.ROLLED_BACK
        return [FinishRollout(done)]
    return []


def converged(state: JobState) -> bool:
    """``JobState.converged``: the one rule, which the Keeper reads too."""
    return state.converged()


def _roll(state: JobState, observed: Observed, now: float, lost: tuple[str, ...]) -> list[Action]:
    """Drain outdated instances, at most max_unavailable out at once; update drained ones."""
    actions: list[Action] = []
    acked = state.routes_acked
    for inst in _by_index(state, Phase.DRAINING):
        if inst.id in lost or inst.drained_at_routes > acked or inst.purpose == "replace":
            continue  # still routable somewhere (wait for every ack), or _replace's job
        if inst.purpose == "remove":
            actions.append(Remove(inst.id))
        else:
            actions.append(Apply(inst.id, state.target(inst)))
    # An update or removal its AppMaster died in the middle of: a round carries its
    # actions to the end before the next is planned, so an instance found updating or
    # removing here has no one carrying it out (it would block the rollout for ever).
    # Both are idempotent: do them again.
    for inst in _by_index(state, Phase.UPDATING):
        if inst.id not in lost:
            actions.append(Apply(inst.id, state.target(inst)))
    actions += [Remove(i.id) for i in _by_index(state, Phase.REMOVING)]
    out = sum(1 for i in state.instances.values() if i.phase in OUT_OF_SERVICE)
    budget = state.spec.rollout.max_unavailable - out
    failed_due = [
        i.id for i in _by_index(state, Phase.FAILED) if i.retry_at <= now and i.id not in lost
    ]
    # failed instances are already out of service: retrying one costs no budget
    if failed_due:
        actions.append(Drain(tuple(failed_due), "update"))
    unhealthy = [i.id for i in state.serving() if i.id in observed.unhealthy]
    outdated = [
        i.id
        for i in state.serving()
        if (i.running is None or i.running.key != state.target(i).key) and i.id not in lost
    ]
    candidates = [i for i in unhealthy + outdated if i not in lost]
    chosen = list(dict.fromkeys(candidates))[: max(budget, 0)]
    if chosen:
        actions.append(Drain(tuple(chosen), "update"))
    return actions
