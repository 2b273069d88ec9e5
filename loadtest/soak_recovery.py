"""Kill and restart one whole cluster N times under constant client load.

    .venv/bin/python -m loadtest.soak_recovery --rounds 20     # what `make soak-recovery` runs

Stands the stack up if none is up (and takes it down again at the end in that case),
deploys a 2-cluster echo service through the Keepers, runs SDK callers for the whole
soak, and per round: SIGKILLs every node of cluster ``b``, restarts it, and waits until
the service answers from ``b`` again. Per round it prints

    kill -> cluster registered again -> service serving on it again, failed calls

A round that does not recover within ``--bound-s`` stops the soak with the evidence: the
tails of the cluster's nodes' ``ray start`` and raylet logs and of the Keepers' logs. Exit
status 0 only when every round recovered in bound and no call failed except with an
explicit UNAVAILABLE.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import infra
from ha_serving import Settings
from ha_serving._errors import StackError
from ha_serving._spec import load_spec
from ha_serving.backend import make_package
from ha_serving.keeper import KeeperClient
from infra import procs
from infra.stack import node_evidence
from loadtest.callers import Load

ROOT = Path(__file__).resolve().parents[1]
ECHO = ROOT / "examples" / "echo"
SERVICE = "soak-echo"
TOLERATED = {"UNAVAILABLE"}
"""An explicit UNAVAILABLE: the caller was told the call failed (a call in flight on the
killed cluster's proxies may have run, so it is not retried); never a silent loss."""


def _wait(what: str, check: Callable[[], bool], deadline: float, interval_s: float = 0.1) -> float:
    """Poll ``check()`` until true; returns when (monotonic); raises TimeoutError."""
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(interval_s)
    return time.monotonic()


def deploy_echo(topo: infra.Topology, keeper: KeeperClient, service: str, timeout_s: float) -> None:
    """Deploy the echo example as ``service`` through the Keepers on every cluster (2
    instances each) and wait until the operation succeeded."""
    spec = load_spec(ECHO / "echo.yaml").model_dump(mode="json")
    clusters = [c.name for c in topo.clusters]
    spec.update(
        name=service,
        instances=2,
        placement={"clusters": [{"name": c} for c in clusters]},
    )
    op = keeper.deploy(json.dumps(spec), make_package(ECHO / "code").data, kind="deploy")
    deadline = time.monotonic() + timeout_s

    def done() -> bool:
        for o in keeper.operations(service):
            if o["op_id"] == op:
                if o["status"] in ("failed", "superseded"):
                    raise RuntimeError(f"deploy {op} {o['status']}: {o.get('error')}")
                return bool(o["status"] == "succeeded")
        return False

    _wait(f"deploy {op}", done, deadline, 0.25)


def evidence(topo: infra.Topology, cluster: str, lines: int = 15) -> str:
    """Log tails of a cluster's nodes (ray start, raylet) and of the Keepers."""
    parts = [f"--- {n.name}: {node_evidence(n, lines)}" for n in topo.cluster(cluster).nodes]
    parts += [f"--- keeper {k.id}: {procs.log_tail(k.proc.log, lines)}" for k in topo.keepers]
    return "\n".join(parts)


def _answered_from(load: Load, cluster: str, after: float) -> Callable[[], bool]:
    return lambda: any(c.answer == cluster for c in load.since(after))


def soak(topo: infra.Topology, rounds: int, cluster: str, bound_s: float, rate: float) -> bool:
    keeper = KeeperClient(
        [k.address for k in topo.keepers], token=topo.keeper_token(), tls=topo.client_tls()
    )
    deploy_echo(topo, keeper, SERVICE, timeout_s=240)
    load = Load(topo, SERVICE, rate=rate)
    totals: list[float] = []
    ok = True
    try:
        _wait(
            "discovery of every proxy",
            lambda: len(load.discovery.endpoints) >= 2 * len(topo.clusters),
            time.monotonic() + 60,
        )
        load.start()
        _wait(
            f"a first answer from {cluster}",
            _answered_from(load, cluster, 0.0),
            time.monotonic() + 60,
        )
        print(
            f"{'round':>5} {'registered':>11} {'serving':>9} {'calls':>7} {'failed':>7}  codes",
            flush=True,
        )
        for r in range(1, rounds + 1):
            killed = time.monotonic()
            infra.kill_cluster(topo.run_dir, cluster)
            deadline = killed + bound_s
            try:
                infra.restart_cluster(
                    topo.run_dir, cluster, timeout_s=max(5.0, bound_s), report=print
                )
                registered = time.monotonic()
                serving = _wait(
                    f"{SERVICE} answering from {cluster}",
                    _answered_from(load, cluster, registered),
                    deadline,
                )
            except (TimeoutError, StackError) as exc:
                print(f"round {r}: NOT recovered within {bound_s:.0f}s: {exc}", flush=True)
                print(evidence(infra.load(topo.run_dir) or topo, cluster), flush=True)
                ok = False
                break
            calls = load.since(killed)
            bad = [c.answer for c in calls if c.answer not in {k.name for k in topo.clusters}]
            untolerated = [o for o in bad if o not in TOLERATED]
            codes = ", ".join(f"{c}={bad.count(c)}" for c in sorted(set(bad))) or "-"
            totals.append(serving - killed)
            print(
                f"{r:>5} {registered - killed:>10.1f}s {serving - killed:>8.1f}s "
                f"{len(calls):>7} {len(bad):>7}  {codes}",
                flush=True,
            )
            ok = ok and not untolerated
    finally:
        load.close()
    if totals:
        print(
            f"kill -> serving again: p50 {statistics.median(totals):.1f}s, "
            f"max {max(totals):.1f}s over {len(totals)} of {rounds} rounds",
            flush=True,
        )
    all_calls = load.since(0)
    failed = [c.answer for c in all_calls if c.answer not in {k.name for k in topo.clusters}]
    print(
        f"calls: {len(all_calls)}, failed: {len(failed)} "
        f"({sum(1 for o in failed if o not in TOLERATED)} not explicit UNAVAILABLE)",
        flush=True,
    )
    return ok and len(totals) == rounds and max(totals) <= bound_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--cluster", default="b", help="the cluster to kill and restart")
    parser.add_argument("--bound-s", type=float, default=60.0, help="a round's recovery bound")
    parser.add_argument("--rate", type=float, default=200.0, help="calls per second offered")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    say = lambda text: print(f"[soak] {text}", flush=True)  # noqa: E731
    with infra.stack_for_run(Settings.from_env(), report=say) as topo:
        passed = soak(topo, args.rounds, args.cluster, args.bound_s, args.rate)
    print(f"[soak] {'PASSED' if passed else 'FAILED'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
