"""Run an autoscaling scenario: four services side by side, the same trace at each.

The four run on one stack, and the reports judge them against issue 13's goals.

    .venv/bin/python -m loadtest.autoscale step-5x             # make autoscale-scenario
    .venv/bin/python -m loadtest.autoscale diurnal --compress 2
    .venv/bin/python -m loadtest.autoscale noise --rate 8 --users 8

Stands the stack up if none is up (and takes it down again at the end in that case).
Deploys through the Keepers, all on the stack's first cluster, four copies of the echo
example whose calls are ``work(work_s)`` (each call holds an instance that long):

- ``static``: no autoscaling, provisioned for the trace's peak at ``--target``
  in-flight calls per instance;
- ``baseline``: configured like Ray Serve's autoscaling defaults: target 2 ongoing
  requests, ``upscale_delay_s`` 30 s (``scale_up_delay_s``), ``downscale_delay_s``
  600 s, metrics every 10 s (``reading_period_s``), averaged over
  ``look_back_period_s`` 30 s (the stable window), no panic mode (a threshold no load
  can reach), no hysteresis;
- ``reactive``: ours, the spec's defaults (KPA's windows) at ``--target``;
- ``predictive``: the same with ``predictive`` (a season of one diurnal day).

Every autoscaled service starts at the count the trace's first minute needs and may
grow to the static one's count. Instances are cheap on purpose (``num_cpus`` 0.1,
``--per-worker`` instances per worker process). Each runs ``--slots`` calls at once
(echo's ``slots``), the others queueing, so a load above its capacity shows as latency
while its proxies' in-flight figure still shows the whole demand, up to
``--max-concurrency`` per instance (shed beyond). ``--slots 0`` leaves only the
proxies' cap: overload then fails at once, and the in-flight figure cannot show more
than ``max_concurrency / target`` times what the instances hold (docs/autoscaling.md,
"A limit to know").

Then one Locust process per service plays the same trace (``loadtest/shapes.py``) from
one common start T0 (``autoscale_locustfile.py``): ``--users`` users at 1x, each a
Poisson source of ``--rate / --users`` calls/s, so the offered rate is ``--rate`` x the
trace's level. Meanwhile the AppMasters' states are read from the store once a second
(the counts ``ha-serving autoscale status`` shows: decided, serving, recorded), and
afterwards each service's ``autoscale`` events (every change of count).

The diurnal scenario's forecast needs two days of history: ``--history seeded`` (the
default) writes two days of the same curve (other noise, no burst) into the store's
rate history just before T0, as the AppMaster would have recorded them; ``live`` plays
three days and judges the last; ``none`` leaves the forecast without history (the
predictive service then behaves as the reactive one).

Writes ``loadtest/reports/autoscale-<scenario>-<UTC timestamp>/``: ``comparison.md``,
``comparison.json``, ``comparison.png``, ``trace.json``, and per service
``<policy>/`` with ``sla.json``, ``report.md``, ``timeline.png``, ``raw.jsonl``,
``counts.jsonl``, ``events.json``, ``locust.html``, ``locust.log``. Exit status: 0 if
the scenario's goals were met, 1 if not, 2 if the run itself failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import infra
from ha_serving import Settings
from ha_serving._errors import InvalidSpec, TransientError
from ha_serving._jobstate import JobState
from ha_serving._spec import load_spec, parse_spec
from ha_serving.backend import make_package
from ha_serving.keeper import KeeperClient
from ha_serving.store import Store
from loadtest import autoscale_analysis as analysis
from loadtest import autoscale_report as report
from loadtest import shapes
from loadtest.run import ECHO, _wait_op, spawn_locust, stop_locust
from loadtest.sla import Record, summarize

ROOT = Path(__file__).resolve().parents[1]
LEAD_S = 20.0
"""Seconds between starting the Locust processes and T0: they start, discover the
endpoints and play the trace's first second as a warm-up."""
SAMPLE_S = 1.0
SETUP_MINUTES = 15.0
"""Allowance for a stack of the run's own and four deploys, in the default time bound."""
RAY_SERVE_DEFAULTS = {
    "target_inflight": 2.0,  # target_ongoing_requests
    "stable_window_s": 30.0,  # look_back_period_s
    "panic_threshold": 100.0,  # Ray Serve has no panic mode: a threshold no load reaches
    "scale_down_delay_s": 600.0,  # downscale_delay_s
    "scale_down_tolerance": 0.0,
    "scale_up_delay_s": 30.0,  # upscale_delay_s
    "reading_period_s": 10.0,  # metrics_interval_s
}
POLICY_TEXT = {
    "static": "no autoscaling: provisioned for the trace's peak",
    "baseline": (
        "Ray-Serve-like: target 2 in flight, upscale delay 30 s, downscale delay 600 s, "
        "metrics every 10 s averaged over 30 s, no panic mode"
    ),
    "reactive": "ours, reactive (KPA's windows: stable 60 s, panic 6 s at 200 %)",
    "predictive": "ours, reactive + Holt-Winters forecast of the rate (a day's season)",
}


@dataclass(frozen=True)
class Load:
    """The load and the services' sizes, from the command line."""

    rate: float
    users: int
    work_s: float
    target: float
    max_concurrency: int
    slots: int
    per_worker: int
    instance_start_s: float
    slo_p99_ms: float
    deadline_s: float
    headroom: int = 0
    """Instances an autoscaled service may grow to above the count the peak needs."""

    @property
    def user_rate(self) -> float:
        return self.rate / self.users

    @property
    def inflight_1x(self) -> float:
        """Calls in flight at 1x (Little's law: rate x hold), nominal."""
        return self.rate * self.work_s

    def count(self, level: float, target: float) -> int:
        """Instances ``level`` x the 1x load needs at ``target`` in flight each."""
        return analysis.needed_after_step(level, self.inflight_1x, target)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except (TimeoutError, RuntimeError, ValueError, TransientError, InvalidSpec) as exc:
        print(f"[autoscale] error: {exc}", file=sys.stderr, flush=True)
        return 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.autoscale", description=__doc__.splitlines()[0]
    )
    p.add_argument("scenario", choices=shapes.SCENARIOS)
    p.add_argument("--seed", type=int, default=1, help="the trace's seed (default 1)")
    p.add_argument(
        "--compress", type=float, default=1.0,
        help="divide the trace's durations by this (diurnal: a 20 min day; 2: 10 min)",
    )  # fmt: skip
    p.add_argument("--step", type=float, default=5.0, help="step height / day peak, x 1x")
    p.add_argument("--level", type=float, default=3.0, help="noise scenario's mean, x 1x")
    p.add_argument("--burst", type=float, default=2.0, help="diurnal burst, x the level")
    p.add_argument("--noise", type=float, default=0.2, help="+- share of noise (0.2)")
    p.add_argument("--rate", type=float, default=10.0, help="calls/s per service at 1x")
    p.add_argument("--users", type=int, default=10, help="Locust users per service at 1x")
    p.add_argument("--work-s", type=float, default=0.2, help="seconds each call holds")
    p.add_argument("--target", type=float, default=2.0, help="ours: in flight per instance")
    p.add_argument(
        "--max-concurrency", type=int, default=16,
        help="calls in flight per instance before its proxies shed (16)",
    )  # fmt: skip
    p.add_argument(
        "--slots", type=int, default=4,
        help="calls an instance runs at once, the rest queue (4; 0: no limit)",
    )  # fmt: skip
    p.add_argument("--per-worker", type=int, default=2, help="instances per worker process")
    p.add_argument(
        "--headroom", type=int, default=0,
        help="autoscaled services may grow this many instances above the peak's count (0)",
    )  # fmt: skip
    p.add_argument(
        "--instance-start-s", type=float, default=10.0,
        help="ours' instance_start_s: the forecast's lead, and the step goal's bound",
    )  # fmt: skip
    p.add_argument("--slo-p99-ms", type=float, default=500.0, help="per-second p99 SLO")
    p.add_argument("--deadline-s", type=float, default=2.0, help="each call's deadline")
    p.add_argument(
        "--history", choices=("seeded", "live", "none"), default="seeded",
        help="diurnal: the forecast's 2 days of history written before T0 (seeded), "
        "played first (live: 3 days, the last judged), or none",
    )  # fmt: skip
    p.add_argument("--reports", type=Path, default=ROOT / "loadtest" / "reports")
    p.add_argument(
        "--max-minutes", type=float, default=None,
        help=f"hard time bound (default: the trace + {SETUP_MINUTES:g} min)",
    )  # fmt: skip
    return p


def trace_params(args: argparse.Namespace) -> shapes.TraceParams:
    live = args.scenario == "diurnal" and args.history == "live"
    return shapes.TraceParams(
        scenario=args.scenario,
        seed=args.seed,
        compress=args.compress,
        step=args.step,
        level=args.level,
        noise=args.noise,
        burst=args.burst,
        cycles=3 if live else 1,
    )


def season(params: shapes.TraceParams) -> tuple[float, float]:
    """The predictive policy's (season_s, step_s): one diurnal day, in 40 steps of at
    least 10 s."""
    cycle = round(shapes.CYCLE_S / params.compress)
    steps = min(40, cycle // 10)
    if cycle < 60 or steps < 2:
        raise ValueError(f"a day of {cycle} s is too short for a forecast: compress less")
    return float(cycle), cycle / steps


def policies(
    load: Load, trace: shapes.Trace, params: shapes.TraceParams
) -> dict[str, dict[str, Any] | None]:
    """Each service's ``autoscaling`` section (None: static)."""
    season_s, step_s = season(params)

    def section(target: float, **more: Any) -> dict[str, Any]:
        return {
            "min_instances": 1,
            "max_instances": load.count(trace.peak, target) + load.headroom,
            "target_inflight": target,
            "instance_start_s": load.instance_start_s,
            **more,
        }

    ours = section(load.target)
    return {
        "static": None,
        "baseline": section(RAY_SERVE_DEFAULTS["target_inflight"], **RAY_SERVE_DEFAULTS),
        "reactive": ours,
        "predictive": {
            **ours,
            "predictive": {"step_s": step_s, "season_s": season_s, "min_seasons": 2},
        },
    }


def service_spec(
    name: str, cluster: str, load: Load, trace: shapes.Trace, auto: dict[str, Any] | None
) -> dict[str, Any]:
    """The echo example as one of the run's services."""
    first_minute = trace.levels[:60]
    if auto is None:
        count = load.count(trace.peak, load.target)
    else:
        count = load.count(sum(first_minute) / len(first_minute), auto["target_inflight"])
    spec = load_spec(ECHO / "echo.yaml").model_dump(mode="json")
    spec.update(
        name=name,
        instances=count,
        instances_per_worker=load.per_worker,
        proxies=2,
        max_concurrency=load.max_concurrency,
        resources={"num_cpus": 0.1},
        config={**spec["config"], "slots": load.slots},
        rollout={**spec["rollout"], "max_unavailable": 2, "drain_timeout_s": 5.0},
        placement={"clusters": [{"name": cluster, "instances": count}]},
        autoscaling=auto,
    )
    parse_spec(spec, source=name)  # InvalidSpec before anything is deployed
    return spec


def run(args: argparse.Namespace) -> int:
    if args.users < 1 or args.rate <= 0 or args.work_s <= 0 or args.slots < 0 or args.headroom < 0:
        raise ValueError(
            "--users, --rate and --work-s must be positive, --slots and --headroom not negative"
        )
    load = Load(
        rate=args.rate,
        users=args.users,
        work_s=args.work_s,
        target=args.target,
        max_concurrency=args.max_concurrency,
        slots=args.slots,
        per_worker=args.per_worker,
        instance_start_s=args.instance_start_s,
        slo_p99_ms=args.slo_p99_ms,
        deadline_s=args.deadline_s,
        headroom=args.headroom,
    )
    params = trace_params(args)
    trace = shapes.build(params)
    sections = policies(load, trace, params)
    for p, section in sections.items():  # InvalidSpec now, before a stack is brought up
        service_spec(f"as-{p}", "a", load, trace, section)
    minutes = args.max_minutes or (LEAD_S + trace.duration_s) / 60 + SETUP_MINUTES
    deadline = time.monotonic() + minutes * 60
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.reports / f"autoscale-{args.scenario}-{stamp}"
    suffix = stamp[4:8] + stamp[9:15]  # MMDDHHMMSS: a run's own services on a kept stack
    names = {p: f"as-{p}-{suffix}" for p in analysis.POLICIES}
    _say(
        f"{args.scenario}: {trace.duration_s:.0f} s of trace (peak {trace.peak:.2f}x), "
        f"judged {trace.judged[0]:.0f}-{trace.judged[1]:.0f} s; bound {minutes:.0f} min"
    )
    with infra.stack_for_run(Settings.from_env(), report=_say) as topo:
        code = _side_by_side(args, load, params, trace, sections, names, topo, out, deadline)
    print(f"\n[autoscale] report: {out}")
    print((out / "comparison.md").read_text())
    return code


def _side_by_side(  # noqa: PLR0917 - the run's parts, once
    args: argparse.Namespace,
    load: Load,
    params: shapes.TraceParams,
    trace: shapes.Trace,
    sections: Mapping[str, dict[str, Any] | None],
    names: Mapping[str, str],
    topo: infra.Topology,
    out: Path,
    deadline: float,
) -> int:
    keeper = KeeperClient(
        [k.address for k in topo.keepers], token=topo.keeper_token(), tls=topo.client_tls()
    )
    cluster = topo.clusters[0].name
    package = make_package(ECHO / "code").data
    with Store.connect(topo.db.ref(), connect_timeout_s=2.0, query_timeout_s=5.0) as store:
        _warn_leftovers(store, names)
        specs = {p: service_spec(names[p], cluster, load, trace, sections[p]) for p in names}
        for p, spec in specs.items():
            auto = spec["autoscaling"]
            what = "static" if auto is None else f"{auto['min_instances']}..{auto['max_instances']}"
            _say(f"{names[p]}: {spec['instances']} instances to start ({what}) on {cluster}")
        ops = {p: keeper.deploy(json.dumps(s), package, kind="deploy") for p, s in specs.items()}
        for p, op in ops.items():
            status = _wait_op(keeper, op, deadline, what=f"deploying {names[p]}", service=names[p])
            if status != "succeeded":
                raise RuntimeError(f"deploying {names[p]}: {status}")
        _say("the four services serve")
        out.mkdir(parents=True, exist_ok=True)
        _, step_s = season(params)
        t0 = math.ceil((time.time() + LEAD_S) / step_s) * step_s  # on the forecast's grid
        if args.scenario == "diurnal" and args.history == "seeded":
            written = seed_history(
                store, names["predictive"], cluster, params, t0, load, step_s=step_s
            )
            _say(f"{written} rate samples of 2 earlier days written for {names['predictive']}")
        (out / "trace.json").write_text(json.dumps(_trace_json(trace, load), indent=2) + "\n")
        sampler = Sampler(store, cluster, names, t0)
        sampler.start()
        procs = {p: _start_locust(names[p], out / p, params, t0, load, topo) for p in names}
        try:
            _wait_locusts(procs, t0 + trace.duration_s, deadline, out)
        finally:
            for proc in procs.values():
                stop_locust(proc)
            sampler.stop()
        changes = {p: _changes(store, names[p], t0) for p in names}
    return _judge(args, load, trace, sections, names, t0, sampler, changes, out)


def _judge(  # noqa: PLR0917 - the run's parts, once
    args: argparse.Namespace,
    load: Load,
    trace: shapes.Trace,
    sections: Mapping[str, dict[str, Any] | None],
    names: Mapping[str, str],
    t0: float,
    sampler: Sampler,
    changes: Mapping[str, list[tuple[float, int, int]]],
    out: Path,
) -> int:
    offered = [trace.users(k, load.users) * load.user_rate for k in range(len(trace.levels))]
    meta: dict[str, Any] = {
        "scenario": args.scenario,
        "window": list(trace.judged),
        "slo_p99_ms": load.slo_p99_ms,
        "policies": POLICY_TEXT,
        "marks": trace.marks,
        "t0": t0,
        "trace": trace.params.to_json(),
        "load": {
            "1x": f"{load.rate:g} calls/s from {load.users} users",
            "each call holds": f"{load.work_s:g} s",
            "slots (calls run at once)": load.slots,
            "max_concurrency": load.max_concurrency,
            "instances per worker": load.per_worker,
            "ours' target in flight": f"{load.target:g}",
            "instance_start_s": f"{load.instance_start_s:g}",
            "history": args.history if args.scenario == "diurnal" else "n/a",
        },
        "autoscaling": dict(sections),
        "services": dict(names),
    }
    by_policy = {}
    for p in analysis.POLICIES:
        raw = out / p / "raw.jsonl"
        lines = raw.read_text().splitlines() if raw.exists() else []
        records = [Record(*json.loads(line)) for line in lines if line]
        if not records:
            raise RuntimeError(f"{names[p]}: Locust recorded no call (see {out / p}/locust.log)")
        target = (sections[p] or {}).get("target_inflight", load.target)
        needed = None
        if trace.step_at is not None:
            needed = load.count(trace.params.step, target)
        samples = sampler.samples[p]
        f = analysis.figures(
            p,
            names[p],
            records=records,
            samples=samples,
            changes=changes[p],
            t0=t0,
            window=trace.judged,
            slo_p99_ms=load.slo_p99_ms,
            step_at=trace.step_at,
            needed=needed,
        )
        by_policy[p] = f
        start, end = trace.judged
        judged = [r for r in records if start <= r.start - t0 < end]
        (out / p / "counts.jsonl").write_text(
            "".join(json.dumps([s.t, s.wanted, s.serving, s.existing]) + "\n" for s in samples)
        )
        (out / p / "events.json").write_text(json.dumps(changes[p], indent=2) + "\n")
        report.write_service(
            out / p,
            f,
            meta,
            seconds=analysis.seconds_of(records, t0, start, end),
            samples=samples,
            offered=offered,
            sla={**_calls(judged), "autoscaling": sections[p]},
        )
    goals = analysis.goals(args.scenario, by_policy, instance_start_s=load.instance_start_s)
    report.write_comparison(out, meta, by_policy, goals, samples=sampler.samples, offered=offered)
    return 0 if all(g.met for g in goals) else 1


def _calls(records: list[Record]) -> dict[str, Any]:
    """``sla.summarize``'s figures of the judged calls, without its availability verdict
    (the scenarios judge seconds, not availability)."""
    found = summarize(records, slo=0.999)
    return {k: v for k, v in found.items() if k not in {"slo", "passed"}}


def seed_history(  # noqa: PLR0917 - one write of one history
    store: Store,
    service: str,
    cluster: str,
    params: shapes.TraceParams,
    t0: float,
    load: Load,
    *,
    step_s: float,
    days: int = 2,
) -> int:
    """Write ``days`` days before ``t0`` into ``service``'s rate history on ``cluster``,
    one sample per step on the AppMaster's own grid (multiples of ``step_s``), each the
    rate the trace's users would have offered over that step; the number written. With
    ``t0`` on the grid (the runner puts it there) the samples are exactly the steps of
    ``[t0 - days x day, t0)``, so the forecast has its two seasons at t0 and its season
    is in phase with the trace's day."""
    levels = shapes.history(params, days)
    begin = t0 - len(levels)
    at = math.floor(begin / step_s) * step_s
    written = 0
    while at < t0:  # the step holding t0 too: the AppMaster replaces it when it ends
        first = round(at - begin)
        span = [
            levels[min(max(k, 0), len(levels) - 1)] for k in range(first, first + round(step_s))
        ]
        users = [shapes.users_for(x, load.users) for x in span]
        store.record_rate_sample(service, cluster, at, sum(users) / len(users) * load.user_rate)
        written += 1
        at += step_s
    return written


class Sampler:
    """Reads each service's counts from its AppMaster's state in the store about once a
    second (in a thread), as ``ha-serving autoscale status`` does."""

    def __init__(self, store: Store, cluster: str, names: Mapping[str, str], t0: float) -> None:
        self.store, self.cluster, self.names, self.t0 = store, cluster, dict(names), t0
        self.samples: dict[str, list[analysis.Sample]] = {p: [] for p in names}
        self.misses = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="autoscale-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            for p, service in self.names.items():
                sample = self.read(service)
                if sample is None:
                    self.misses += 1
                else:
                    self.samples[p].append(sample)

    def read(self, service: str) -> analysis.Sample | None:
        try:
            found = self.store.load_appmaster_state(self.cluster, service)
        except TransientError:
            return None  # a gap: the last sample holds
        if found is None:
            return None
        state = JobState.from_record(found[0])
        return analysis.Sample(
            t=time.time() - self.t0,
            wanted=state.wanted(),
            serving=len(state.serving()),
            existing=len(state.instances),
        )


def _changes(store: Store, service: str, t0: float) -> list[tuple[float, int, int]]:
    """The autoscaler's changes of count, ``(t since t0, from, to)``, oldest first."""
    found = store.list_events(service=service, kind="autoscale", limit=1_000_000)
    return [
        (e.at - t0, int(e.detail["current"]), int(e.detail["desired"]))
        for e in found
        if e.detail and "current" in e.detail and "desired" in e.detail
    ]


def _warn_leftovers(store: Store, names: Mapping[str, str]) -> None:
    ours = set(names.values())
    left = sorted(s.name for s in store.list_services() if s.name.startswith("as-"))
    left = [n for n in left if n not in ours]
    if left:
        _say(
            f"warning: {len(left)} services of earlier autoscale runs are still deployed "
            f"({', '.join(left[:4])}{', ...' if len(left) > 4 else ''}); the Keepers cannot "
            "remove a service yet, and their instances share this machine's cores: "
            "`make down` before a run whose figures count"
        )


def _trace_json(trace: shapes.Trace, load: Load) -> dict[str, Any]:
    return {
        "params": trace.params.to_json(),
        "duration_s": trace.duration_s,
        "judged": list(trace.judged),
        "step_at": trace.step_at,
        "burst": trace.burst,
        "marks": trace.marks,
        "users_1x": load.users,
        "user_rate": load.user_rate,
        "levels": [round(x, 4) for x in trace.levels],
        "users": [trace.users(k, load.users) for k in range(len(trace.levels))],
    }


def _start_locust(  # noqa: PLR0917 - one process of the run
    service: str,
    out: Path,
    params: shapes.TraceParams,
    t0: float,
    load: Load,
    topo: infra.Topology,
) -> subprocess.Popen[bytes]:
    out.mkdir(parents=True, exist_ok=True)
    keepers = [k.address for k in topo.keepers]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "HA_LOADTEST_SERVICE": service,
        "HA_LOADTEST_METHOD": "work",
        "HA_LOADTEST_PAYLOAD": json.dumps(load.work_s),
        "HA_LOADTEST_USER_RATE": repr(load.user_rate),
        "HA_LOADTEST_SHARED_CLIENT": "1",
        "HA_LOADTEST_TRACE": json.dumps(params.to_json()),
        "HA_LOADTEST_T0": repr(t0),
        "HA_LOADTEST_USERS_1X": str(load.users),
        "HA_LOADTEST_KEEPERS": ",".join(keepers),
        "HA_SERVING_KEEPER_TOKEN": topo.discovery_token() or "",  # ours: env is fine
        "HA_SERVING_TLS_CA": str(topo.tls.ca) if topo.tls else "",
        "HA_LOADTEST_DEADLINE_S": str(load.deadline_s),
        "HA_LOADTEST_RAW": str(out / "raw.jsonl"),
    }
    return spawn_locust(ROOT / "loadtest" / "autoscale_locustfile.py", [], out, env, cwd=ROOT)


def _wait_locusts(
    procs: Mapping[str, subprocess.Popen[bytes]], end: float, deadline: float, out: Path
) -> None:
    """Until every Locust process has ended with its trace (they stop at ``end``, epoch
    seconds); a process that ends early fails the run."""
    progress = _every(60.0)
    while any(p.poll() is None for p in procs.values()):
        for policy, proc in procs.items():
            code = proc.poll()
            if code is not None and time.time() < end - 2.0:
                raise RuntimeError(
                    f"Locust for {policy} ended early (exit {code}): see {out / policy}/locust.log"
                )
        if time.time() > end + 60.0 or time.monotonic() > deadline:
            raise TimeoutError("the Locust processes did not end with their trace")
        if progress():
            _say(f"{max(0.0, end - time.time()):.0f} s of trace left")
        time.sleep(1.0)


def _every(seconds: float) -> Callable[[], bool]:
    last = [time.monotonic()]

    def due() -> bool:
        if time.monotonic() - last[0] < seconds:
            return False
        last[0] = time.monotonic()
        return True

    return due


def _say(text: str) -> None:
    print(f"[autoscale] {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
