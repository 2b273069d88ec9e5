"""The autoscaler's own drills: a scale-out under way when the AppMaster or the Keeper
leader dies (issue 13: "no scaling decision is lost or doubled").

A second service, ``chaos-scale`` (the drill service's code, on one cluster, with an
``autoscaling:`` policy), is brought to one instance (``prepare``); a load of callers
whose calls each hold ``hold_s`` keeps about ``callers`` calls in flight, so the
autoscaler decides to scale out (to ``ceil(callers / target_inflight)`` instances).
The drill waits for that decision in the store (``wait_decision``), kills its target at
once, while the new instances are still starting, and then ``settle`` waits for the
service to carry the decision out and checks (``check``):

- **nothing lost**: the autoscale events since the load started form a chain, each
  decision starting from the count the previous one decided, the first from where the
  service stood; the state's count is the last decision's;
- **nothing doubled**: no decision was recorded twice, and as many instances serve, and
  as many worker actors are alive on the cluster, as the last decision says (one
  instance per worker): an AppMaster that started the same instances again beside those
  its predecessor started would show here;
- **every call at most once**: no call of the load ran twice (the service's ledger).

``stop`` ends the load (``actions.heal`` calls it, so a drill that failed half-way
leaves no callers behind). The service stays deployed between drills, scaled in to one
instance again by the next drill's ``prepare``; it is never on the other cluster.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import infra
from chaos import heldload, target
from chaos.target import DrillError
from ha_serving._jobstate import JobState
from ha_serving.backend import make_package
from ha_serving.keeper import KeeperRefused
from loadtest.callers import Load

SERVICE = "chaos-scale"
DRILL_SERVICE = heldload.DRILL_SERVICE
CALLERS = 6
HOLD_S = 0.5
POLICY: dict[str, Any] = {
    "min_instances": 1,
    "max_instances": 4,
    "target_inflight": 2.0,
    "stable_window_s": 6.0,
    "panic_window_s": 2.0,
    "scale_down_delay_s": 600.0,  # no scale-in while the drill runs: one direction
    "instance_start_s": 5.0,
}
"""``CALLERS`` calls in flight at ``target_inflight`` 2 ask for 3 instances; a 4th
(``max_instances``) is room for a doubled decision to show."""


def spec(topo: infra.Topology, cluster: str, *, autoscaling: bool = True) -> str:
    return heldload.drill_spec(
        SERVICE, ledger_dir(topo), [cluster], POLICY if autoscaling else None
    )


def ledger_dir(topo: infra.Topology) -> Path:
    return topo.run_dir / "chaos-scale-ledger"


# --- the load, one per stack (this process) -------------------------------------------


@dataclass
class Scaling:
    """One drill's load and what it saw."""

    cluster: str
    load: Load
    started: float
    since_event: int
    before: int
    """Instances when the load started."""
    decision: dict[str, Any] = field(default_factory=dict)


LOADS: heldload.Loads[Scaling] = heldload.Loads(SERVICE, "start_scaling_load")


def _ops_done(topo: infra.Topology, ops: Sequence[str], timeout_s: float) -> None:
    target.ops_done(topo, SERVICE, ops, timeout_s)


def _state(topo: infra.Topology, cluster: str) -> JobState | None:
    return target.job_state(topo, cluster, SERVICE)


_poll = target.poll


def prepare(topo: infra.Topology, cluster: str, timeout_s: float = 240.0) -> int:
    """``chaos-scale`` on ``cluster`` with one instance and its policy, the autoscaler's
    earlier count forgotten; returns the instances it stands at."""
    keeper = target.keeper_client(topo, timeout_s=30.0)
    try:
        keeper.get_service(SERVICE)
    except KeeperRefused:
        package = make_package(DRILL_SERVICE / "code").data
        op = keeper.deploy(spec(topo, cluster), package, kind="deploy")
        _ops_done(topo, [op], timeout_s)
    else:
        # autoscaling off at 1 instance (the autoscaler forgets its count and clears its
        # memory, which would otherwise still ask for what an earlier drill's load
        # needed), then on again from 1
        for body in (spec(topo, cluster, autoscaling=False), spec(topo, cluster)):
            _ops_done(topo, [keeper.deploy(body, b"", kind="config")], timeout_s)

    def at_one() -> bool:
        state = _state(topo, cluster)
        return (
            state is not None
            and state.spec.scaled(state.autoscaled) == 1
            and len(state.serving()) == 1
            and len(target.actors(topo, cluster, SERVICE, "worker")) == 1
        )

    _poll(f"{SERVICE} at one instance on {cluster}", at_one, timeout_s)
    return 1


def start(topo: infra.Topology, cluster: str) -> Scaling:
    """Prepare the service, then start the load (``CALLERS`` callers, calls held
    ``HOLD_S``); returns the run."""
    stop(topo.run_dir)
    before = prepare(topo, cluster)
    since = heldload.latest_event(topo)
    load = heldload.start_load(topo, SERVICE, CALLERS, HOLD_S)
    run = Scaling(cluster, load, time.time(), since, before)
    LOADS.put(topo.run_dir, run)
    load.start()
    return run


def stop(run_dir: Path) -> str | None:
    """End the load of the drill on the stack in ``run_dir``, if one runs."""
    return LOADS.stop(run_dir)


def running(run_dir: Path) -> Scaling:
    return LOADS.get(run_dir)


def _decisions(topo: infra.Topology, cluster: str, since: int) -> list[tuple[int, int, int]]:
    """(event id, current, desired) of the autoscale events on ``cluster`` after
    ``since``, oldest first."""
    db = target.store(topo)
    try:
        found = db.list_events(service=SERVICE, kind="autoscale", limit=1000)
    finally:
        db.close()
    return [
        (e.id, int(e.detail["current"]), int(e.detail["desired"]))
        for e in found
        if e.id > since and e.cluster == cluster and e.detail
    ]


def wait_decision(topo: infra.Topology, timeout_s: float) -> dict[str, Any]:
    """Until the autoscaler has decided to scale out under the load; what it decided,
    and how many instances served at that moment (fewer than decided: mid-scale)."""
    run = running(topo.run_dir)
    found: list[tuple[int, int, int]] = []

    def decided() -> bool:
        found[:] = [d for d in _decisions(topo, run.cluster, run.since_event) if d[2] > d[1]]
        return bool(found)

    _poll(f"a scale-out decision for {SERVICE}", decided, timeout_s)
    state = _state(topo, run.cluster)
    serving = len(state.serving()) if state is not None else 0
    event, current, desired = found[0]
    run.decision = {
        "event": event,
        "current": current,
        "desired": desired,
        "serving": serving,
        "after_s": round(time.time() - run.started, 3),
    }
    return run.decision


@dataclass(frozen=True)
class Outcome:
    decisions: tuple[tuple[int, int], ...]
    """(current, desired) of each decision since the load started, oldest first."""
    before: int
    counted: int
    """The state's count (``ServiceSpec.scaled``)."""
    serving: int
    workers: int
    ran_twice: tuple[str, ...] = ()
    per_worker: int = 1
    """The service's ``instances_per_worker``: workers expected for ``n`` instances."""


def check(o: Outcome) -> list[str]:
    """Why the outcome shows a scaling decision lost or doubled, or a call run twice
    (empty: none). Pure, so each case is unit-tested with a planted bug."""
    problems = []
    if not o.decisions:
        return ["no scaling decision was recorded under the load"]
    if o.decisions[0][0] != o.before:
        problems.append(
            f"lost: the first decision starts from {o.decisions[0][0]}, the service stood "
            f"at {o.before}"
        )
    for a, b in zip(o.decisions, o.decisions[1:], strict=False):
        if b == a:
            problems.append(f"doubled: decision {a[0]}->{a[1]} recorded twice")
        elif b[0] != a[1]:
            problems.append(f"lost: {a[0]}->{a[1]} then {b[0]}->{b[1]} (a decision between)")
    last = o.decisions[-1][1]
    if o.counted != last:
        problems.append(f"lost: the last decision is {last}, the state counts {o.counted}")
    for count, want, what in (
        (o.serving, last, "instances serve"),
        (o.workers, -(-last // o.per_worker), "worker actors live"),
    ):
        if count != want:
            problems.append(f"{'doubled' if count > want else 'lost'}: {count} {what} for {last}")
    if o.ran_twice:
        problems.append(f"{len(o.ran_twice)} calls ran twice, e.g. {o.ran_twice[0]}")
    return problems


def settle(topo: infra.Topology, since: float, timeout_s: float) -> dict[str, Any]:
    """Until the cluster carries out the last decision (the state's count serving, as
    many worker actors alive); then ``check``. Seconds from ``since`` (the fault) to
    then, with the figures; DrillError naming every problem."""
    run = running(topo.run_dir)
    seen: dict[str, Any] = {}

    def carried_out() -> bool:
        state = _state(topo, run.cluster)
        decisions = _decisions(topo, run.cluster, run.since_event)
        if state is None or not decisions:
            return False
        counted = state.spec.scaled(state.autoscaled)
        workers = len(target.actors(topo, run.cluster, SERVICE, "worker"))
        serving = len(state.serving())
        seen.update(decisions=decisions, counted=counted, serving=serving, workers=workers)
        return counted == decisions[-1][2] == serving == workers

    try:
        _poll(f"{SERVICE} carrying out its last decision", carried_out, timeout_s)
    except DrillError:
        if not seen:
            raise
    took = round(time.time() - since, 3)
    calls = run.load.since(0)
    outcome = Outcome(
        decisions=tuple((c, d) for _, c, d in seen["decisions"]),
        before=run.before,
        counted=seen["counted"],
        serving=seen["serving"],
        workers=seen["workers"],
        ran_twice=heldload.ran_twice(ledger_dir(topo), {c.call_id for c in calls}),
    )
    problems = check(outcome)
    if problems:
        raise DrillError("; ".join(problems))
    return {
        "seconds": took,
        "decisions": [f"{c}->{d}" for c, d in outcome.decisions],
        "serving": outcome.serving,
        "workers": outcome.workers,
        "calls": len(calls),
        "failed": sum(1 for c in calls if not c.ok),
    }
