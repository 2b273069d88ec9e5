"""Run a load-test scenario against the local stack and write its SLA report.

    .venv/bin/python -m loadtest.run rolling-update-500     # what `make loadtest` runs

(The autoscaling scenarios, ``step-5x``, ``diurnal`` and ``noise``, are
``loadtest/autoscale.py``'s; given one of their names this runs that.)

Stands the stack up if none is up (and takes it down again at the end in that case),
deploys the scenario's service through the Keepers, drives steady load with Locust
(headless, gRPC users on the client SDK), performs the scenario's change through the
Keepers while the load runs, keeps the load for a tail, and writes
``loadtest/reports/<scenario>-<UTC timestamp>/`` (sla.json, report.md, timeline.png,
locust.html). The exit status is 0 only if the SLO was met (Locust's own "any failure"
exit code does not decide it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import infra
from ha_serving import Settings
from ha_serving._spec import load_spec
from ha_serving._status import ACTIVE
from ha_serving.backend import make_package
from ha_serving.client import discovered_client
from ha_serving.keeper import KeeperClient
from loadtest import report
from loadtest.shapes import SCENARIOS as AUTOSCALE_SCENARIOS
from loadtest.sla import Record, summarize

ROOT = Path(__file__).resolve().parents[1]
ECHO = ROOT / "examples" / "echo"
SERVICE = "loadtest-echo"


@dataclass(frozen=True)
class Scenario:
    instances: int
    """Across all clusters (split evenly)."""
    per_worker: int
    users: int = 32
    warmup_s: float = 15.0
    tail_s: float = 15.0
    min_requests: int = 30_000
    """With zero failures, N requests only bound the error rate to ~3/N."""
    max_unavailable: int = 25
    change: dict[str, Any] = field(default_factory=lambda: {"config": {"prefix": "v2"}})
    kind: str = "config"
    options: dict[str, Any] = field(default_factory=dict)
    """The operation's options (canary steps and pauses, blue-green window, analysis)."""
    slo: float = 0.999
    deadline_s: float = 2.0
    max_update_s: float | None = None
    """If set, an update that takes longer fails the run even when the SLO is met."""


SCENARIOS = {
    "rolling-update-500": Scenario(instances=500, per_worker=25),
    # new code, not only config: every instance loads a package whose echo.py says
    # VERSION = "2", in place (a fresh module namespace per instance), under load
    "code-update-500": Scenario(
        instances=500, per_worker=25, kind="code", change={"code_version": "2"}, max_update_s=60
    ),
    "rolling-update-100": Scenario(
        instances=100, per_worker=10, max_unavailable=10, min_requests=10_000
    ),
    # 50 -> 500 instances under load: the change multiplies every cluster's count by 10
    "scale-50-500": Scenario(
        instances=50, per_worker=25, kind="scale", change={"scale_factor": 10}
    ),
    # 5 of each cluster's 50 instances run the candidate; its share of traffic goes
    # 10% -> 50% -> 100%, 10 s each, judged every 2 s, then it is promoted everywhere
    "canary-100": Scenario(
        instances=100,
        per_worker=10,
        max_unavailable=10,
        min_requests=10_000,
        kind="canary",
        change={"config": {"prefix": "canary"}},
        options={
            "steps": [10, 50, 100],
            "pause_s": 10,
            "canary_instances": 5,
            "analysis": {"interval_s": 2, "min_requests": 20},
        },
    ),
    # a second full set of 100 (green) beside blue, the switch, a 10 s rollback window
    # with blue warm, then blue retires
    "blue-green-100": Scenario(
        instances=100,
        per_worker=25,
        max_unavailable=10,
        min_requests=10_000,
        kind="blue_green",
        change={"config": {"prefix": "green"}},
        options={"pause_s": 10, "analysis": {"interval_s": 2, "min_requests": 20}},
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in AUTOSCALE_SCENARIOS:  # issue 13's: four services side by side
        from loadtest import autoscale

        return autoscale.main(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS) + list(AUTOSCALE_SCENARIOS))
    parser.add_argument("--reports", type=Path, default=ROOT / "loadtest" / "reports")
    parser.add_argument("--max-minutes", type=float, default=20.0, help="hard time bound")
    args = parser.parse_args(argv)
    scenario = SCENARIOS[args.scenario]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.reports / f"{args.scenario}-{stamp}"
    with infra.stack_for_run(Settings.from_env(), report=_say) as topo:
        sla = _run(
            args.scenario, scenario, topo, out, deadline=time.monotonic() + args.max_minutes * 60
        )
    print(f"\n[loadtest] report: {out}")
    print((out / "report.md").read_text())
    return 0 if sla["passed"] else 1


def _say(text: str) -> None:
    print(f"[loadtest] {text}", flush=True)


def _run(name: str, sc: Scenario, topo: infra.Topology, out: Path, *, deadline: float) -> Any:
    keeper = KeeperClient(
        [k.address for k in topo.keepers], token=topo.keeper_token(), tls=topo.client_tls()
    )
    clusters = [c.name for c in topo.clusters]
    spec = load_spec(ECHO / "echo.yaml").model_dump(mode="json")
    per_cluster = sc.instances // len(clusters)
    spec.update(
        name=SERVICE,
        instances=per_cluster,
        instances_per_worker=sc.per_worker,
        max_concurrency=256,
        resources={"num_cpus": 0.1},
        rollout={**spec["rollout"], "max_unavailable": sc.max_unavailable, "drain_timeout_s": 5.0},
        placement={"clusters": [{"name": c, "instances": per_cluster} for c in clusters]},
    )
    started = time.monotonic()
    op = keeper.deploy(json.dumps(spec), make_package(ECHO / "code").data, kind="deploy")
    _wait_op(keeper, op, deadline, what=f"deploying {sc.instances} instances")
    deploy_s = time.monotonic() - started
    print(f"[loadtest] {sc.instances} instances serving after {deploy_s:.0f}s", flush=True)

    out.mkdir(parents=True, exist_ok=True)
    raw = out / "raw.jsonl"
    locust = _start_locust(sc, topo, keeper, out, raw)
    try:
        _wait_records(raw, 1000, deadline, minimum_s=sc.warmup_s)
        changed = _changed(spec, sc)
        package = _new_code(sc, out)
        update_start = time.time()
        op = keeper.deploy(json.dumps(changed), package, kind=sc.kind, options=sc.options)
        print(f"[loadtest] {sc.kind} update {op} started", flush=True)
        status = _wait_op(keeper, op, deadline, what="the update")
        update_end = time.time()
        print(f"[loadtest] update {status} after {update_end - update_start:.1f}s", flush=True)
        versions = _versions_answering(sc, topo, keeper)
        _wait_records(raw, sc.min_requests, deadline, minimum_s=sc.tail_s)
    finally:
        stop_locust(locust)
    records = [Record(*json.loads(line)) for line in raw.read_text().splitlines() if line]
    sla = summarize(records, slo=sc.slo)
    sla.update(
        scenario=name,
        instances=changed["instances"] * len(clusters),
        instances_per_worker=sc.per_worker,
        clusters=len(clusters),
        users=sc.users,
        deadline_s=sc.deadline_s,
        update=_describe(sc, status),
        update_start=update_start,
        update_end=update_end,
        update_duration_s=update_end - update_start,
        deploy_duration_s=deploy_s,
    )
    if status != "succeeded":
        sla["passed"] = False
    if versions is not None:
        sla["versions_after_update"] = versions
        if set(versions) != {str(sc.change["code_version"])}:
            sla["passed"] = False
    if sc.max_update_s is not None:
        sla["max_update_s"] = sc.max_update_s
        if update_end - update_start > sc.max_update_s:
            sla["passed"] = False
    report.write(out, sla, records)
    return sla


def _describe(sc: Scenario, status: str) -> str:
    """The change, as the report states it."""
    if sc.kind == "canary":
        o = sc.options
        return (
            f"canary: {o['canary_instances']} instances per cluster, traffic steps "
            f"{o['steps']} % held {o['pause_s']} s each, analysed every "
            f"{o['analysis']['interval_s']} s, then promoted in place "
            f"(max_unavailable {sc.max_unavailable}), status {status}"
        )
    if sc.kind == "code":
        return (
            f"code update (echo.py VERSION {sc.change['code_version']!r}) of {sc.instances} "
            f"instances in place, max_unavailable {sc.max_unavailable} per cluster, clusters "
            f"one at a time, bound {sc.max_update_s:.0f} s, status {status}"
        )
    if sc.kind == "blue_green":
        return (
            f"blue-green: a second full set of {sc.instances} instances, the switch, "
            f"{sc.options['pause_s']} s rollback window with blue warm, then blue retired, "
            f"status {status}"
        )
    what = f"{sc.kind} from {sc.instances} instances" if sc.kind == "scale" else sc.kind
    return (
        f"{what}, max_unavailable {sc.max_unavailable} per cluster, "
        f"clusters one at a time, status {status}"
    )


def _changed(spec: dict[str, Any], sc: Scenario) -> dict[str, Any]:
    """The spec after the scenario's change (a scale multiplies every cluster's count)."""
    if (version := sc.change.get("code_version")) is not None:
        return {**spec, "version": str(version)}
    factor = sc.change.get("scale_factor")
    if factor is None:
        return {**spec, **sc.change}
    clusters = [{**c, "instances": c["instances"] * factor} for c in spec["placement"]["clusters"]]
    placement = {**spec["placement"], "clusters": clusters}
    return {**spec, "instances": spec["instances"] * factor, "placement": placement}


def _new_code(sc: Scenario, out: Path) -> bytes:
    """The package a code update ships: examples/echo/code with its VERSION changed (b""
    keeps the deployed package, as every other kind of change does)."""
    version = sc.change.get("code_version")
    if version is None:
        return b""
    code = out / "code-v2"
    shutil.copytree(ECHO / "code", code, ignore=shutil.ignore_patterns("__pycache__"))
    source = (code / "echo.py").read_text()
    if 'VERSION = "1"' not in source:
        raise RuntimeError('examples/echo/code/echo.py no longer says VERSION = "1"')
    (code / "echo.py").write_text(source.replace('VERSION = "1"', f"VERSION = {str(version)!r}"))
    return make_package(code).data


def _versions_answering(
    sc: Scenario, topo: infra.Topology, keeper: KeeperClient, calls: int = 200
) -> dict[str, int] | None:
    """After a code update: which code version answered ``calls`` calls (all must be the
    new one); None for the other kinds of change."""
    if "code_version" not in sc.change:
        return None
    client, discovery = discovered_client(
        SERVICE, keeper.addresses, token=topo.keeper_token(), tls=topo.client_tls()
    )
    seen: dict[str, int] = {}
    try:
        for _ in range(calls):
            answer = client.call(SERVICE, "echo", "v?", timeout=sc.deadline_s)
            version = str(answer["version"]) if isinstance(answer, dict) else repr(answer)
            seen[version] = seen.get(version, 0) + 1
    finally:
        discovery.stop()
        client.close()
    print(f"[loadtest] versions answering after the update: {seen}", flush=True)
    return seen


def _start_locust(
    sc: Scenario, topo: infra.Topology, keeper: KeeperClient, out: Path, raw: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "HA_LOADTEST_SERVICE": SERVICE,
        "HA_LOADTEST_KEEPERS": ",".join(keeper.addresses),
        "HA_SERVING_KEEPER_TOKEN": topo.discovery_token() or "",  # ours: env is fine
        "HA_SERVING_TLS_CA": str(topo.tls.ca) if topo.tls else "",
        "HA_LOADTEST_DEADLINE_S": str(sc.deadline_s),
        "HA_LOADTEST_RAW": str(raw),
    }
    args = ["--users", str(sc.users), "--spawn-rate", str(sc.users), "--run-time", "30m"]
    return spawn_locust(ROOT / "loadtest" / "locustfile.py", args, out, env)


def spawn_locust(
    locustfile: Path, args: list[str], out: Path, env: dict[str, str], *, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Locust headless on ``locustfile`` in its own session (``stop_locust`` ends its
    group), its HTML report and log in ``out``; ``args`` are the run's own options."""
    argv = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(locustfile),
        "--headless",
        *args,
        "--stop-timeout",
        "5",
        "--html",
        str(out / "locust.html"),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    log = (out / "locust.log").open("wb")
    return subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop_locust(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT Locust's process group: on SIGINT it writes its HTML report before it
    exits (on SIGTERM it does not)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _count(raw: Path) -> int:
    if not raw.exists():
        return 0
    with raw.open("rb") as f:
        return sum(1 for _ in f)


def _wait_records(raw: Path, target: int, deadline: float, *, minimum_s: float) -> None:
    """Wait at least ``minimum_s``, and until ``target`` requests are recorded."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < minimum_s or _count(raw) < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {_count(raw)} of {target} requests before the time bound")
        time.sleep(1.0)


def _wait_op(
    keeper: KeeperClient, op_id: str, deadline: float, *, what: str, service: str = SERVICE
) -> str:
    while time.monotonic() < deadline:
        for op in keeper.operations(service):
            if op["op_id"] == op_id and op["status"] not in ACTIVE:
                if op.get("error"):
                    print(f"[loadtest] {op_id} {op['status']}: {op['error']}", flush=True)
                return str(op["status"])
        time.sleep(1.0)
    raise TimeoutError(f"{what} did not finish in time")


if __name__ == "__main__":
    sys.exit(main())
