"""Run the fault drills under constant load and write their report.

    .venv/bin/python -m chaos.run                               # what `make chaos` runs
    .venv/bin/python -m chaos.run --drill kill-keeper-leader    # the control run, then one

Stands the stack up if none is up (and takes it down again at the end in that case),
deploys the drill service (``examples/drill``) on 2 clusters through the Keepers, starts
paced SDK callers that record every call, and runs a control run (no fault) and then each
drill with Chaos Toolkit (``chaoslib.experiment.run_experiment``) while a control client
issues config and scale operations through the Keepers. After each drill it waits until
the operations settle, reads what the store and the service show, and checks the
operation history; at the end it reads the service's ledger of executed call ids and
writes ``chaos/reports/<run>/``: ``journal-<drill>.json`` (Chaos Toolkit's journal),
``history.jsonl``, ``summary.md``, ``timeline.png`` and ``chaostoolkit.log``.
Exit status 0 only when every drill passed with no violation.

    .venv/bin/python -m chaos.run --mode random --seed 7 --duration-s 600

Random mode: a seeded plan of faults drawn from the catalogue (``chaos.schedule``),
printed first, run one after another against one stack (each drill's own experiment:
its steady state, its fault, its heal; a short gap between them) under one control
client for the whole run; then the history checker and availability over the whole run,
and a summary listing each fault with its time. The same seed gives the same plan.

A drill whose faults act on the load's links (``client_links``), and random mode, run
the load's callers through the fault hub (``chaos.links``); the hub is stopped at the
end, and Keepers a drill routed through it are put back on the DB's own address when
the stack outlives the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from chaoslib import __version__ as chaoslib_version
from chaoslib.experiment import run_experiment
from chaoslib.run import RunEventHandler
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

import infra
from chaos import actions, links, target
from chaos.catalogue import Drill, load_catalogue, select
from chaos.checker import (
    UNCHECKED,
    DataPlane,
    FinalState,
    Violation,
    check_control,
    check_executions,
    data_plane,
    within,
)
from chaos.control import ControlLoad, keeper_deploy
from chaos.history import CallRecord, ControlEvent, read_ledger
from chaos.observe import final_state, last_event_id
from chaos.report import (
    DrillResult,
    RandomRun,
    judge,
    method_runs,
    random_reasons,
    write,
    write_journal,
    write_random,
)
from chaos.schedule import Slot, TopUp, plan
from ha_serving import Settings
from ha_serving._spec import load_spec
from ha_serving._status import ACTIVE
from ha_serving.backend import make_package
from ha_serving.keeper import KeeperClient
from loadtest.callers import Call, Load

ROOT = Path(__file__).resolve().parents[1]
DRILL_SERVICE = ROOT / "examples" / "drill"
SERVICE = "chaos-drill"
CHAOS_SETTINGS: dict[str, Any] = {"runtime": {"rollbacks": {"strategy": "always"}}}
"""Rollbacks (``heal``) run whatever happened: also after a steady state that failed."""
SETTLE_S = 120.0
"""How long the operations of a drill may take to finish after it."""


@dataclass(frozen=True)
class Options:
    callers: int = 8
    rate: float = 200.0
    control_interval_s: float = 2.0
    max_minutes: float = 40.0
    window_s: float = 60.0
    """Each drill observes the load at least this long from its start (the load runs on
    after the experiment until then), so its availability is over a fixed window, as an
    SLO is, not over however long the fault happened to take (a 7 s drill at 200 calls/s
    would fail 99.9 % with 2 failed calls)."""
    client_links: bool = False
    """The load's callers reach the proxies through the fault hub's links (``chaos.links``)."""


@dataclass
class Partial:
    """A drill run, before the ledger (read once, at the end) is checked."""

    drill: Drill
    journal: dict[str, Any]
    span: tuple[float, float]
    history: list[ControlEvent]
    violations: list[Violation]


@dataclass
class Session:
    topo: infra.Topology
    out: Path
    options: Options
    console: Console
    keeper: KeeperClient = field(init=False)
    base_spec: dict[str, Any] = field(init=False)
    clusters: list[str] = field(init=False)
    prefix: str = field(init=False)
    seq: int = 0
    instances: int = 2

    def __post_init__(self) -> None:
        self.keeper = target.keeper_client(self.topo, timeout_s=30.0)
        self.clusters = [c.name for c in self.topo.clusters][:2]
        self.prefix = "c" + uuid.uuid4().hex[:8]  # op ids of this run: never another run's

    # --- the service and the load -----------------------------------------------------

    def deploy(self) -> None:
        """The drill service on 2 clusters, its ledger in this run's report directory."""
        spec = load_spec(DRILL_SERVICE / "drill.yaml").model_dump(mode="json")
        spec.update(
            name=SERVICE,
            config={"seq": self.seq, "ledger_dir": str(self.out / "ledger")},
            placement={"clusters": [{"name": c} for c in self.clusters]},
        )
        self.base_spec = spec
        self.instances = int(spec["instances"])
        op = self.keeper.deploy(
            json.dumps(spec), make_package(DRILL_SERVICE / "code").data, kind="deploy"
        )
        status = _wait_ops(self.keeper, {op}, time.monotonic() + 300)
        if status.get(op) != "succeeded":
            raise RuntimeError(f"deploying {SERVICE} ({op}): {status.get(op)}")

    def start_load(self) -> Load:
        load = Load(
            self.topo,
            SERVICE,
            method="call",
            payload=lambda call_id: json.dumps({"id": call_id}).encode(),
            threads=self.options.callers,
            rate=self.options.rate,
            route=links.load_route(self.topo.run_dir) if self.options.client_links else None,
        )
        proxies = int(self.base_spec["proxies"]) * len(self.clusters)
        _until("discovery of every proxy", lambda: len(load.discovery.endpoints) >= proxies, 90)
        load.start()
        _until(
            f"answers from {', '.join(self.clusters)}",
            lambda: {x.cluster for x in load.since(0)} >= set(self.clusters),
            60,
        )
        return load

    # --- one drill ------------------------------------------------------------------

    def run_drill(self, drill: Drill, on_event: Callable[[str], None]) -> Partial:
        """The drill's experiment under the control client, then the history check. An
        error of the runner itself (not of the system under test) fails the drill with
        its reason instead of ending the run; the stack is healed either way."""
        started = time.time()
        control = self.control_load(drill.name)
        journal: dict[str, Any] = {"status": "not started", "deviated": False}
        try:
            since = self.last_event()
            control.start()
            journal = self.experiment(drill, on_event)
        except Exception as exc:  # the runner's own failure: report it, keep going
            journal = {**journal, "status": f"runner error: {type(exc).__name__}: {exc}"}
            since = 0
        finally:
            control.stop()
            if not _rolled_back(journal):
                on_event("healing (the drill's own rollback did not succeed)")
                self.heal()
        left = started + self.options.window_s - time.time()
        if left > 0:
            on_event(f"observing the load {left:.0f} s more ({self.options.window_s:.0f} s window)")
            time.sleep(left)  # the observation window itself, not a wait for a condition
        ended = time.time()
        self.seq, self.instances = control.seq, control.instances
        write_journal(self.out, drill.name, journal)
        on_event("waiting for the control operations to settle")
        history = control.events()
        _wait_ops(self.keeper, {e.op_id for e in history}, time.monotonic() + SETTLE_S)
        try:
            violations = check_control(history, self.observe(since))
        except Exception as exc:  # the final state could not be read: nothing was checked
            violations = [Violation(UNCHECKED, drill.name, f"{type(exc).__name__}: {exc}")]
        return Partial(drill, journal, (started, ended), history, violations)

    def control_load(self, name: str) -> ControlLoad:
        """The control client, its ops labelled ``name``, from where the last one left."""
        return ControlLoad(
            keepers=[k.address for k in self.topo.keepers],
            base_spec=self.base_spec,
            deploy=keeper_deploy(
                self.topo.keeper_token(), timeout_s=5.0, tls=self.topo.client_tls()
            ),
            drill=name,
            prefix=self.prefix,
            seq=self.seq,
            instances=self.instances,
            interval_s=self.options.control_interval_s,
        )

    def experiment(self, drill: Drill, on_event: Callable[[str], None]) -> dict[str, Any]:
        actions.forget_injected()  # its probes wait for its own faults only
        journal: dict[str, Any] = run_experiment(
            drill.fresh_experiment(),
            settings=CHAOS_SETTINGS,
            experiment_vars=({"run_dir": str(self.topo.run_dir), "service": SERVICE}, {}),
            event_handlers=[_Events(on_event)],
        )
        return journal

    def heal(self) -> list[str]:
        """What every drill's rollback does (``chaos.actions.heal``): CPU hogs stopped,
        links passing, real clocks, then whatever is down restarted."""
        return actions.heal({"run_dir": str(self.topo.run_dir)})

    # --- one fault of a random run ------------------------------------------------------

    def run_fault(self, drill: Drill, label: str, on_event: Callable[[str], None]) -> FaultRun:
        """The drill's experiment, no window, no control client of its own (the random
        run has one for the whole run); healed whatever happened."""
        started = time.time()
        journal: dict[str, Any] = {"status": "not started", "deviated": False}
        try:
            journal = self.experiment(drill, on_event)
        except Exception as exc:  # the runner's own failure: report it, keep going
            journal = {**journal, "status": f"runner error: {type(exc).__name__}: {exc}"}
        healed = _rolled_back(journal)
        if not healed:
            on_event("healing (the drill's own rollback did not succeed)")
            try:
                self.heal()
                healed = True
            except Exception as exc:  # still broken: the run goes on, the verdict says so
                on_event(f"heal failed: {type(exc).__name__}: {exc}")
        write_journal(self.out, label, journal)
        return FaultRun(label, drill, journal, (started, time.time()), healed)

    def last_event(self) -> int:
        db = target.store(self.topo)
        try:
            return last_event_id(db, SERVICE)
        finally:
            db.close()

    def observe(self, since_event: int) -> FinalState:
        eps = target.endpoints(self.topo, SERVICE)
        served = {
            c: [
                a.seq
                for a in target.ask(
                    [e.address for e in eps if e.cluster == c],
                    SERVICE,
                    calls=12,
                    tls=self.topo.client_tls(),
                )
                if a.ok and a.cluster == c
            ]
            for c in self.clusters
        }
        db = target.store(self.topo)
        try:
            return final_state(db, SERVICE, self.clusters, served, since_event=since_event)
        finally:
            db.close()


@dataclass
class FaultRun:
    """One fault of a random run, before the calls are judged."""

    label: str
    """``<place in the plan>-<drill>``: what the history and the report call it."""
    drill: Drill
    journal: dict[str, Any]
    span: tuple[float, float]
    healed: bool

    @property
    def injected(self) -> bool:
        """Its method ran (its steady state held before it)."""
        return bool(method_runs(self.journal))


class _Events(RunEventHandler):  # type: ignore[misc]  # chaoslib has no type hints
    """Chaos Toolkit's progress, one line of text per step, for the progress bar."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say

    def start_hypothesis_before(self, _experiment: Any) -> None:
        self.say("steady state before")

    def start_method(self, _experiment: Any) -> None:
        self.say("fault")

    def start_hypothesis_after(self, _experiment: Any) -> None:
        self.say("steady state after")

    def start_rollbacks(self, _experiment: Any) -> None:
        self.say("rollback (heal)")

    def start_activity(self, activity: Any) -> None:
        self.say(str(activity.get("name")))


def _rolled_back(journal: Mapping[str, Any] | None) -> bool:
    """The drill's heal ran and succeeded."""
    runs = (journal or {}).get("rollbacks") or []
    return bool(runs) and all(r.get("status") == "succeeded" for r in runs)


def _until(what: str, check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def _wait_ops(keeper: KeeperClient, op_ids: set[str], deadline: float) -> dict[str, str]:
    """Until none of ``op_ids`` is pending or running (or the deadline); their statuses."""
    status: dict[str, str] = {}
    while time.monotonic() < deadline:
        try:
            status = {o["op_id"]: o["status"] for o in keeper.operations(SERVICE)}
        except Exception:  # a Keeper or the DB still coming back
            status = {}
        else:
            if not any(status.get(op, "pending") in ACTIVE for op in op_ids & set(status)):
                return status
        time.sleep(1.0)
    return status


# --- the run -------------------------------------------------------------------------


def _records(
    calls: Sequence[Call], spans: Sequence[tuple[str, tuple[float, float]]]
) -> list[CallRecord]:
    """The calls as history records, each labelled with the drill (or fault) whose span
    it started in ("" between them)."""

    def drill_of(start: float) -> str:
        for name, (begin, end) in spans:
            if begin <= start <= end:
                return name
        return ""

    return [
        CallRecord(
            drill_of(c.start), c.start, c.latency_ms, c.outcome, c.cluster, c.call_id, c.caller
        )
        for c in calls
    ]


def finish(
    partials: Sequence[Partial], calls: Sequence[CallRecord], ledger: Mapping[str, int]
) -> list[DrillResult]:
    results = []
    for p in partials:
        mine = [c for c in calls if c.drill == p.drill.name]
        results.append(
            judge(
                p.drill.name,
                p.drill.meta.fault,
                control=p.drill.meta.control,
                thresholds=p.drill.thresholds,
                journal=p.journal,
                calls=mine,
                history=p.history,
                violations=[*p.violations, *check_executions(mine, ledger)],
                span=p.span,
            )
        )
    return results


def execute(session: Session, drills: Sequence[Drill]) -> list[DrillResult]:
    console, out = session.console, session.out
    console.print(f"[chaos] deploying {SERVICE} on {', '.join(session.clusters)}", markup=False)
    session.deploy()
    load = session.start_load()
    partials: list[Partial] = []
    deadline = time.monotonic() + session.options.max_minutes * 60
    stopped = "not run (time bound)"
    try:
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
        ) as progress:
            task = progress.add_task("drills", total=len(drills))
            for i, drill in enumerate(drills, 1):
                if time.monotonic() > deadline:
                    console.print(
                        f"[chaos] time bound reached: {drill.name} and later not run", markup=False
                    )
                    break

                def say(text: str, i: int = i, name: str = drill.name) -> None:
                    line = escape(f"{name}: {text}")
                    progress.update(task, description=f"[{i}/{len(drills)}] {line}")

                say("starting")
                p = session.run_drill(drill, say)
                partials.append(p)
                progress.advance(task)
                console.print(_line(p, load), markup=False)
    except Exception as exc:  # e.g. the stack could not be healed: report what ran
        stopped = f"not run: the run stopped ({type(exc).__name__}: {exc})"
        console.print(f"[chaos] {stopped}", markup=False)
    finally:
        load.close()
    time.sleep(1.0)  # calls still running in a backend write their ledger line
    calls = _records(load.since(0), [(p.drill.name, p.span) for p in partials])
    results = finish(partials, calls, read_ledger(out / "ledger"))
    results += [_not_run(d, stopped) for d in drills[len(partials) :]]
    history = [e for p in partials for e in p.history]
    write(out, out.name, results, calls, history, _about(session))
    return results


@dataclass(frozen=True)
class RandomOptions:
    seed: int
    duration_s: float = 600.0
    min_faults: int = 20
    gap_s: float = 2.0
    min_availability: float = 0.999


def own_checks(drill: Drill) -> Drill:
    """The drill as a random run judges one fault of it: its steady states, activities
    and recovery bar; availability, streak and p99 only over the whole run (a fault of a
    random run has no observation window of its own)."""
    relaxed = drill.thresholds.model_copy(
        update={"min_availability": 0.0, "max_failure_streak_s": None, "max_p99_ms": None}
    )
    return Drill(drill.name, drill.path, drill.experiment, drill.meta, relaxed)


def execute_random(
    session: Session,
    slots: Sequence[Slot],
    catalogue: Mapping[str, Drill],
    ro: RandomOptions,
    top_up: TopUp | None = None,
) -> RandomRun:
    """The plan's faults one after another, then top-ups while one fits, until
    ``ro.duration_s`` has passed (no fault starts later), under one load and one control
    client; then the checks over the whole run, and the report."""
    console, out = session.console, session.out
    console.print(f"[chaos] deploying {SERVICE} on {', '.join(session.clusters)}", markup=False)
    session.deploy()
    load = session.start_load()
    since = session.last_event()
    control = session.control_load("random")
    started = time.time()
    control.start()
    try:
        faults, stopped = _run_plan(session, slots, catalogue, ro, top_up)
    finally:
        control.stop()
    ended = time.time()
    history = control.events()
    console.print("[chaos] waiting for the control operations to settle", markup=False)
    _wait_ops(session.keeper, {e.op_id for e in history}, time.monotonic() + SETTLE_S)
    try:
        violations = check_control(history, session.observe(since))
    except Exception as exc:  # the final state could not be read: nothing was checked
        violations = [Violation(UNCHECKED, "random", f"{type(exc).__name__}: {exc}")]
    load.close()
    time.sleep(1.0)  # calls still running in a backend write their ledger line
    calls = _records(load.since(0), [(f.label, f.span) for f in faults])
    violations += check_executions(calls, read_ledger(out / "ledger"))
    whole = data_plane(within(calls, started, ended), started)
    judged = tuple(_judge_fault(f, calls) for f in faults)
    reasons = random_reasons(
        whole,
        violations,
        injected=sum(1 for f in faults if f.injected),
        min_faults=ro.min_faults,
        min_availability=ro.min_availability,
        unhealed=[f.label for f in faults if not f.healed],
        deviated=[r.name for r in judged if not r.passed],
        stopped=stopped,
    )
    run = RandomRun(
        seed=ro.seed,
        duration_s=ro.duration_s,
        planned=len(slots),
        min_faults=ro.min_faults,
        min_availability=ro.min_availability,
        started=started,
        ended=ended,
        whole=whole,
        violations=tuple(violations),
        faults=judged,
        reasons=tuple(reasons),
    )
    write_random(out, out.name, run, calls, history, _about(session))
    return run


def _run_plan(
    session: Session,
    slots: Sequence[Slot],
    catalogue: Mapping[str, Drill],
    ro: RandomOptions,
    top_up: TopUp | None = None,
) -> tuple[list[FaultRun], str]:
    """Run the faults in order, a gap of load after each; then, when the plan is done
    before ``ro.duration_s``, top-ups while one fits in the time left (``TopUp``). What
    ran, and why it stopped early ("" when the plan was done)."""
    console = session.console
    faults: list[FaultRun] = []
    stopped = ""
    clock0 = time.monotonic()

    def left() -> float:
        return ro.duration_s - (time.monotonic() - clock0)

    def sequence() -> Iterator[tuple[int, Drill]]:
        for slot in slots:
            yield slot.index, catalogue[slot.drill]
        index, last = len(slots), slots[-1].drill if slots else None
        while top_up is not None and (drill := top_up.next(last=last, room_s=left())):
            index, last = index + 1, drill.name
            yield index, drill

    try:
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
        ) as progress:
            task = progress.add_task("faults", total=len(slots))
            for index, drill in sequence():
                if left() <= 0:
                    stopped = f"{ro.duration_s:g} s passed: faults {index} and later not run"
                    break
                label = f"{index:02d}-{drill.name}"
                if index > len(slots):
                    progress.update(task, total=index)
                    console.print(
                        f"[chaos] the plan is done with {left():.0f} s left: "
                        f"top-up {label} (~{drill.meta.duration_s:g} s)",
                        markup=False,
                    )

                def say(text: str, label: str = label) -> None:
                    progress.update(task, description=escape(f"[{label}] {text}"))

                fault = session.run_fault(drill, label, say)
                faults.append(fault)
                progress.advance(task)
                console.print(
                    f"[chaos] {label}: {fault.journal.get('status')}, "
                    f"took {fault.span[1] - fault.span[0]:.0f} s",
                    markup=False,
                )
                time.sleep(ro.gap_s)  # recovery before the next fault: load, no fault
    except Exception as exc:  # e.g. the stack could not be healed: judge what ran
        stopped = f"the run stopped: {type(exc).__name__}: {exc}"
    if stopped:
        console.print(f"[chaos] {stopped}", markup=False)
    return faults, stopped


def _judge_fault(f: FaultRun, calls: Sequence[CallRecord]) -> DrillResult:
    return judge(
        f.label,
        f.drill.meta.fault,
        control=False,
        thresholds=own_checks(f.drill).thresholds,
        journal=f.journal,
        calls=calls,
        history=[],
        violations=[],
        span=f.span,
    )


def _line(p: Partial, load: Load) -> str:
    calls = [c for c in load.since(0) if p.span[0] <= c.start <= p.span[1]]
    failed = sum(1 for c in calls if not c.ok)
    status = p.journal.get("status")
    deviated = " DEVIATED" if p.journal.get("deviated") else ""
    return (
        f"[chaos] {p.drill.name}: {status}{deviated}, {len(calls)} calls, {failed} failed, "
        f"{len(p.violations)} control-plane violations"
    )


def _not_run(drill: Drill, reason: str) -> DrillResult:
    return DrillResult(
        name=drill.name,
        fault=drill.meta.fault,
        control=drill.meta.control,
        thresholds=drill.thresholds,
        journal_status="not run",
        deviated=False,
        span=(0.0, 0.0),
        window=None,
        whole=DataPlane(0, 0),
        during=DataPlane(0, 0),
        recovery_s=None,
        reasons=(reason,),
    )


def _about(session: Session) -> dict[str, str]:
    topo = session.topo
    return {
        "stack": (
            f"{len(topo.clusters)} Ray clusters ({', '.join(c.name for c in topo.clusters)}), "
            f"{len(topo.keepers)} Keepers, DB {topo.db.kind}, "
            f"GCS fault tolerance {'on' if topo.redis else 'off'}"
        ),
        "service": (
            f"{SERVICE} ({DRILL_SERVICE.relative_to(ROOT)}) on {', '.join(session.clusters)}"
        ),
        "load": (
            f"{session.options.callers} SDK callers, {session.options.rate:g} calls/s offered, "
            f"2 s deadline; control ops every {session.options.control_interval_s:g} s"
        ),
        "engine": f"chaostoolkit-lib {chaoslib_version}",
        "network": (
            "the load's callers reach the proxies through the fault hub's links"
            if session.options.client_links
            else "the load's callers reach the proxies directly"
        ),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drill", action="append", default=[], help="run only this drill")
    parser.add_argument(
        "--mode", choices=["catalogue", "random"], default="catalogue", help="random: --seed"
    )
    parser.add_argument("--seed", type=int, help="random mode's seed (default: a fresh one)")
    parser.add_argument(
        "--duration-s", type=float, default=600.0, help="random mode: start faults this long"
    )
    parser.add_argument(
        "--min-faults", type=int, default=20, help="random mode: at least this many faults"
    )
    parser.add_argument("--gap-s", type=float, default=2.0, help="random mode: between faults")
    parser.add_argument(
        "--min-availability", type=float, default=0.999, help="random mode: whole-run bar"
    )
    parser.add_argument(
        "--set", choices=["all", "smoke"], default="all", help="smoke: the drills CI runs"
    )
    parser.add_argument("--no-control", action="store_true", help="skip the control run")
    parser.add_argument("--reports", type=Path, default=ROOT / "chaos" / "reports")
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--rate", type=float, default=200.0, help="calls per second offered")
    parser.add_argument("--max-minutes", type=float, default=40.0, help="hard time bound")
    parser.add_argument(
        "--window-s", type=float, default=60.0, help="each drill's load window, at least"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    names = [n for arg in args.drill for n in arg.split(",") if n]
    catalogue = load_catalogue()
    ro = RandomOptions(
        seed=args.seed if args.seed is not None else secrets.randbelow(1_000_000),
        duration_s=args.duration_s,
        min_faults=args.min_faults,
        gap_s=args.gap_s,
        min_availability=args.min_availability,
    )
    pool = [d for d in catalogue if not names or d.name in names]
    try:
        drills = select(catalogue, names, control=not args.no_control, smoke=args.set == "smoke")
        slots = (
            plan(
                pool,
                seed=ro.seed,
                duration_s=ro.duration_s,
                min_faults=ro.min_faults,
                gap_s=ro.gap_s,
            )
            if args.mode == "random"
            else []
        )
    except ValueError as exc:
        parser.error(str(exc))
    catalogue_by_name = {d.name: d for d in catalogue}
    console = Console()
    if args.mode == "random":
        _print_plan(console, slots, ro)
    # absolute: the service's workers write the ledger there from their own directories
    out = args.reports.resolve() / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    _log_to(out / "chaostoolkit.log")
    chosen = [catalogue_by_name[s.drill] for s in slots] if slots else drills
    options = Options(
        callers=args.callers,
        rate=args.rate,
        max_minutes=args.max_minutes,
        window_s=args.window_s,
        client_links=any(d.meta.client_links for d in chosen),
    )

    def say(text: str) -> None:
        console.print(f"[chaos] {text}", markup=False)

    settings = Settings.from_env()
    outlives_run = infra.load(settings.stack.run_dir.resolve()) is not None
    with infra.stack_for_run(settings, report=say) as topo:
        session = Session(topo, out, options, console)
        try:
            if args.mode == "random":
                top_up = TopUp(pool, seed=ro.seed, gap_s=ro.gap_s)
                passed = execute_random(session, slots, catalogue_by_name, ro, top_up).passed
            else:
                results = execute(session, drills)
                passed = bool(results) and all(r.passed for r in results)
        finally:
            _teardown_links(topo.run_dir, restore_keepers=outlives_run, say=say)
    console.print(f"\n[chaos] report: {out}", markup=False)
    # the table, as CI prints it at the end of its log; per-drill details stay in the file
    summary = (out / "summary.md").read_text()
    print(summary if args.mode == "random" else summary.split("\n## ")[0], flush=True)
    console.print(f"[chaos] {'PASSED' if passed else 'FAILED'}", markup=False)
    return 0 if passed else 1


def _teardown_links(run_dir: Path, *, restore_keepers: bool, say: Callable[[str], None]) -> None:
    """The fault hub stopped, and Keepers routed through it back on the DB's own address
    when the stack outlives the run; a failure is said, not raised (the report is due)."""
    try:
        for line in links.teardown(run_dir, restore_keepers=restore_keepers):
            say(line)
    except Exception as exc:  # the stack is left as it is: say so
        say(f"could not take the fault links down: {type(exc).__name__}: {exc}")


def _print_plan(console: Console, slots: Sequence[Slot], ro: RandomOptions) -> None:
    console.print(
        f"[chaos] random mode, seed {ro.seed}: {len(slots)} faults planned in "
        f"{ro.duration_s:g} s (the same plan again: --seed {ro.seed})",
        markup=False,
    )
    for slot in slots:
        console.print(
            f"[chaos]   {slot.index:2d}. {slot.drill} at ~{slot.at_s:.0f} s "
            f"(~{slot.duration_s:g} s)",
            markup=False,
        )


def _log_to(path: Path) -> None:
    """Chaos Toolkit's own log (and the probes' reasons) to a file, not the console."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    for name in ("chaostoolkit",):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


if __name__ == "__main__":
    sys.exit(main())
