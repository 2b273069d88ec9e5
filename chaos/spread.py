"""The autoscaler across clusters: a cluster lost under load, the survivor scales up to
carry the whole of it (issue 13: "after a cluster is lost, the survivors scale up to
carry the whole load"), and the Keeper's floor is lifted once the cluster is back.

A third service, ``chaos-spread`` (the drill service's code, on clusters a and b with
equal weights, with an ``autoscaling:`` policy), is brought to one instance on each
(``prepare``); ``CALLERS`` callers whose calls each hold ``HOLD_S`` keep about
``CALLERS`` calls in flight, split between the clusters by weight. ``wait_steady``
waits until each cluster's autoscaler has settled on its share (it serves the count it
decided, at least its own demand, and the own demands together meet the whole load's
need) and notes each cluster's own demand. After the survivor's peer is killed,
``wait_carried`` waits until the survivor serves the whole demand, and reports the
Keeper's first floor for it if one came by then (``capacity_floor`` event) and the modes
of its decisions since the kill (``keeper``: the floor raised the count;
``panic``/``stable``: its own figures did). After the peer is back, ``wait_lifted``
waits until the survivor's floor is 0 again and lists every floor and decision since
the kill. ``check`` (pure) judges the outcome; ``stop`` ends the load (``actions.heal`` calls it).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import infra
from chaos import heldload, target
from chaos.target import DrillError
from ha_serving.backend import make_package
from ha_serving.keeper import KeeperRefused
from loadtest.callers import Load

SERVICE = "chaos-spread"
DRILL_SERVICE = heldload.DRILL_SERVICE
CLUSTERS = ("a", "b")
CALLERS = 12
HOLD_S = 0.5
POLICY: dict[str, Any] = {
    "min_instances": 1,
    "max_instances": 8,
    "target_inflight": 2.0,
    "stable_window_s": 12.0,
    "panic_window_s": 3.0,
    "panic_threshold": 3.5,  # the load's start (3x on one instance) is no panic: no overshoot
    "scale_down_delay_s": 600.0,  # no scale-in while the drill runs
    "instance_start_s": 5.0,
}
"""``CALLERS`` calls in flight at ``target_inflight`` 2 need 6 instances, 3 per cluster
while both serve; the survivor alone needs 6 (``max_instances`` 8 leaves room). No
panic at the load's start (6 in flight on 1 instance is 3x, below the threshold 3.5),
which would leave a count far above the share; the survivor's doubling after the kill
is no panic either: its stable window and the Keeper's floor race. (With 8 callers, the
survivor's count, rounded up from a random split, was at the whole need before the kill
in a first run, so "carrying" the load took nothing; ``check`` now refuses that.)"""


def need() -> int:
    return math.ceil(CALLERS / float(POLICY["target_inflight"]))


def spec(topo: infra.Topology, *, autoscaling: bool = True) -> str:
    return heldload.drill_spec(SERVICE, ledger_dir(topo), CLUSTERS, POLICY if autoscaling else None)


def ledger_dir(topo: infra.Topology) -> Path:
    return topo.run_dir / "chaos-spread-ledger"


@dataclass
class Spread:
    """One drill's load and what it saw."""

    load: Load
    started: float
    since_event: int
    demand: dict[str, int] = field(default_factory=dict)
    """Each cluster's own demand once steady, before the fault."""
    counts: dict[str, int] = field(default_factory=dict)
    """Each cluster's serving instances once steady, before the fault."""
    fault_at: float | None = None
    """When the fault ``wait_carried`` timed from was injected."""


LOADS: heldload.Loads[Spread] = heldload.Loads(SERVICE, "start_spread_load")


def prepare(topo: infra.Topology, timeout_s: float = 240.0) -> None:
    """``chaos-spread`` on every cluster of ``CLUSTERS`` at one instance with its policy,
    the autoscaler's earlier count and memory forgotten (autoscaling off, then on)."""
    keeper = target.keeper_client(topo, timeout_s=30.0)
    try:
        keeper.get_service(SERVICE)
    except KeeperRefused:
        package = make_package(DRILL_SERVICE / "code").data
        target.ops_done(
            topo, SERVICE, [keeper.deploy(spec(topo), package, kind="deploy")], timeout_s
        )
    else:
        for body in (spec(topo, autoscaling=False), spec(topo)):
            target.ops_done(topo, SERVICE, [keeper.deploy(body, b"", kind="config")], timeout_s)

    def at_one() -> bool:
        for cluster in CLUSTERS:
            state = target.job_state(topo, cluster, SERVICE)
            if state is None or state.spec.scaled(state.autoscaled) != 1:
                return False
            if len(state.serving()) != 1:
                return False
        return True

    target.poll(f"{SERVICE} at one instance on {', '.join(CLUSTERS)}", at_one, timeout_s)


def start(topo: infra.Topology) -> Spread:
    """Prepare the service, then start the load; returns the run."""
    stop(topo.run_dir)
    prepare(topo)
    since = heldload.latest_event(topo)
    load = heldload.start_load(topo, SERVICE, CALLERS, HOLD_S)
    target.poll(
        f"discovery of {SERVICE} on {', '.join(CLUSTERS)}",
        lambda: {e.cluster for e in load.discovery.endpoints} >= set(CLUSTERS),
        60,
    )
    run = Spread(load, time.time(), since)
    LOADS.put(topo.run_dir, run)
    load.start()
    return run


def stop(run_dir: Path) -> str | None:
    """End the load of the drill on the stack in ``run_dir``, if one runs."""
    return LOADS.stop(run_dir)


def running(run_dir: Path) -> Spread:
    return LOADS.get(run_dir)


def wait_steady(topo: infra.Topology, timeout_s: float) -> dict[str, Any]:
    """Until every cluster serves the count it decided, at least its own demand, and the
    own demands together meet the load's need; each cluster's own demand then. (A
    cluster's count may stand above its own demand: a panic at the load's start never
    scales in within the drill.)"""
    run = running(topo.run_dir)
    seen: dict[str, int] = {}
    counts: dict[str, int] = {}

    def steady() -> bool:
        seen.clear()
        for cluster in CLUSTERS:
            state = target.job_state(topo, cluster, SERVICE)
            if state is None or state.autoscale_demand is None:
                return False
            count = state.spec.scaled(state.autoscaled)
            if not count == len(state.serving()) >= state.autoscale_demand:
                return False
            seen[cluster] = state.autoscale_demand
            counts[cluster] = count
        return sum(seen.values()) >= need()

    took = target.poll(f"{SERVICE} steady on {', '.join(CLUSTERS)}", steady, timeout_s)
    run.demand, run.counts = dict(seen), dict(counts)
    return {"demand": run.demand, "serving": run.counts, "after_s": round(took, 3)}


@dataclass(frozen=True)
class Outcome:
    need: int
    """Instances the whole load needs at the target."""
    before: dict[str, int]
    """Each cluster's own demand before the fault."""
    at_fault: int
    """The survivor's serving instances before the fault."""
    serving: int
    """The survivor's serving instances at the end of the wait (or when it gave up)."""
    carried_s: float | None
    """Seconds from the fault until the survivor served ``need`` (None: never)."""
    max_s: float
    floor_s: float | None = None
    """Seconds from the fault to the survivor's first floor (None: none came)."""
    floor: int = 0
    ran_twice: tuple[str, ...] = ()


def check(o: Outcome) -> list[str]:
    """Why the survivor did not carry the whole load in time, or a call ran twice
    (empty: it did, none did). Pure, so each case is unit-tested with a planted bug."""
    problems = []
    if sum(o.before.values()) < o.need:
        problems.append(f"before the fault the clusters asked {o.before}, short of {o.need}")
    if o.at_fault >= o.need:
        problems.append(
            f"the survivor served {o.at_fault} before the fault, already the whole need "
            f"({o.need}): nothing was carried"
        )
    if o.carried_s is None or o.carried_s > o.max_s:
        when = "never" if o.carried_s is None else f"after {o.carried_s:.1f} s"
        problems.append(
            f"the survivor served {o.serving} of the {o.need} instances the load needs: "
            f"carried {when} (bound {o.max_s:g} s)"
        )
    if o.ran_twice:
        problems.append(f"{len(o.ran_twice)} calls ran twice, e.g. {o.ran_twice[0]}")
    return problems


def _events(topo: infra.Topology, since: int, cluster: str) -> list[Any]:
    db = target.store(topo)
    try:
        found = db.list_events(service=SERVICE, limit=1000)
    finally:
        db.close()
    return [e for e in found if e.id > since and e.cluster == cluster]


def wait_carried(
    topo: infra.Topology, survivor: str, since: float, timeout_s: float, max_s: float
) -> dict[str, Any]:
    """Until ``survivor`` serves the instances the whole load needs; then ``check``.
    Seconds from ``since`` (the fault), when the Keeper's floor came and what it was, and
    the survivor's decisions since the fault with their modes; DrillError naming every
    problem."""
    run = running(topo.run_dir)
    run.fault_at = since
    serving = [0]

    def carried() -> bool:
        state = target.job_state(topo, survivor, SERVICE)
        serving[0] = 0 if state is None else len(state.serving())
        return serving[0] >= need()

    try:
        target.poll(f"{SERVICE} carried by {survivor}", carried, timeout_s)
        carried_s: float | None = round(time.time() - since, 3)
    except DrillError:
        carried_s = None
    events = _events(topo, run.since_event, survivor)
    floors = [e for e in events if e.kind == "capacity_floor" and e.at >= since - 1]
    first = next((e for e in floors if (e.detail or {}).get("floor", 0) > 0), None)
    decisions = [
        f"{d['current']}->{d['desired']} {d['mode']} at +{e.at - since:.1f} s"
        for e in events
        if e.kind == "autoscale" and e.at >= since - 1 and (d := e.detail or {})
    ]
    calls = run.load.since(0)
    outcome = Outcome(
        need=need(),
        before=run.demand,
        at_fault=run.counts.get(survivor, 0),
        serving=serving[0],
        carried_s=carried_s,
        max_s=max_s,
        floor_s=None if first is None else round(first.at - since, 3),
        floor=0 if first is None else int((first.detail or {})["floor"]),
        ran_twice=heldload.ran_twice(ledger_dir(topo), {c.call_id for c in calls}),
    )
    problems = check(outcome)
    if problems:
        raise DrillError("; ".join(problems) + f" (decisions: {decisions})")
    return {
        "seconds": carried_s,
        "need": outcome.need,
        "before": outcome.before,
        "at_fault": outcome.at_fault,
        "serving": outcome.serving,
        "floor": outcome.floor,
        "floor_after_s": outcome.floor_s,
        "floor_reason": None if first is None else (first.detail or {}).get("reason"),
        "decisions": decisions,
        "calls": len(calls),
        "failed": sum(1 for c in calls if not c.ok),
    }


def wait_lifted(topo: infra.Topology, survivor: str, timeout_s: float) -> dict[str, Any]:
    """Until the Keeper's floor for ``survivor`` is 0 again (nothing unmet: the lost
    cluster is back); every floor set for it since the fault, and its decisions, each
    with its time from the fault: what the Keeper did beside the survivor's own figures."""
    run = running(topo.run_dir)

    def lifted() -> bool:
        db = target.store(topo)
        try:
            floor = db.capacity_floor(SERVICE, survivor)
        finally:
            db.close()
        return floor is None or floor.floor == 0

    took = target.poll(f"the floor of {SERVICE} on {survivor} lifted", lifted, timeout_s)
    since = run.fault_at if run.fault_at is not None else run.started
    events = [e for e in _events(topo, run.since_event, survivor) if e.at >= since - 1]
    return {
        "after_s": round(took, 3),
        "floors": [
            f"{d.get('floor')} at +{e.at - since:.1f} s ({d.get('reason')})"
            for e in events
            if e.kind == "capacity_floor" and (d := e.detail or {})
        ],
        "decisions": [
            f"{d['current']}->{d['desired']} {d['mode']} at +{e.at - since:.1f} s"
            for e in events
            if e.kind == "autoscale" and (d := e.detail or {})
        ],
    }
